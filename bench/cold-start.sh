#!/usr/bin/env bash
# Start-up with large plugins: three Python components (`gatehouse plugin
# new --lang python`, componentize-py; ~18 MB each, distinct content) behind
# three routes. For a cold compile cache and then a warm one: seconds from
# exec to the "listening" line, and until every plugin serves optimized code.
#
#   bench/cold-start.sh                    # this build
#   BASE=/path/to/gatehouse bench/cold-start.sh   # also another build, interleaved
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
PORT=18700 ADMIN=19700

. bench/lib.sh
need curl curl
need bc bc
ports_free $PORT $ADMIN
cargo build --release -p gatehouse --bin gatehouse --quiet
work=$(mktemp -d)
pid=
cleanup() { [ -z "$pid" ] || kill "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

python_plugin "$work/py"
mkdir -p "$work/plugins" "$work/routes"
{
  printf 'service = "user-service"\nupstream = "http://127.0.0.1:1"\n'
  for i in 1 2 3; do
    # Same code, distinct bytes: a custom section naming the copy.
    python3 -c 'import sys; b=open(sys.argv[1],"rb").read(); p=bytes([10])+b"cold-start"+sys.argv[2].encode()*8; open(sys.argv[3],"wb").write(b+bytes([0,len(p)])+p)' \
      "$work/py/py.wasm" "$i" "$work/plugins/py$i.wasm"
    printf '\n[[route]]\nprefix = "/py%s"\nauth = "public"\nplugin = "py%s"\n' "$i" "$i"
  done
} >"$work/routes/py.toml"
echo "cold-start: 3 plugins of $(($(stat -c %s "$work/plugins/py1.wasm") / 1024 / 1024)) MiB, $(nproc) cores"

# name binary cache-dir → one line
start_once() {
  local name=$1 bin=$2 cache=$3 t0 ready done n code
  printf '[server]\nlisten = "127.0.0.1:%s"\nadmin = "127.0.0.1:%s"\n[plugins]\ncache_dir = "%s"\n' $PORT $ADMIN "$cache" >"$work/g.toml"
  t0=$(date +%s.%N)
  GATEHOUSE_JWT_SECRET=cold-start-secret-cold-start-secret-0123 GATEHOUSE_LOG=info \
    "$bin" --config "$work/g.toml" --log-format json serve --workers 2 >"$work/out.log" 2>&1 &
  pid=$!
  for _ in $(seq 2400); do grep -q '"listening"' "$work/out.log" && break; sleep 0.05; done
  ready=$(date +%s.%N)
  code=$(curl -s -o /dev/null -w '%{http_code}' "127.0.0.1:$PORT/py3")
  for _ in $(seq 2400); do
    n=$(curl -s "127.0.0.1:$ADMIN/admin/plugins" |
      python3 -c 'import json, sys; print(sum(p.get("compiler") == "cranelift" and not p.get("optimizing") for p in json.load(sys.stdin)))')
    [ "$n" = 3 ] && break
    sleep 0.05
  done
  done=$(date +%s.%N)
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  [ "$code" = 200 ] || { echo "$name: /py3 answered $code" >&2; cat "$work/out.log" >&2; exit 1; }
  printf '  %-26s listening after %5.1f s, all optimized after %5.1f s\n' "$name" "$(bc <<<"$ready - $t0")" "$(bc <<<"$done - $t0")"
}

for round in $(seq "$ROUNDS"); do
  for build in gatehouse ${BASE:+base}; do
    bin=./target/release/gatehouse
    [ "$build" = base ] && bin=$BASE
    rm -rf "$work/cache-$build"
    start_once "$build, cold cache" "$bin" "$work/cache-$build"
    start_once "$build, warm cache" "$bin" "$work/cache-$build"
  done
done
