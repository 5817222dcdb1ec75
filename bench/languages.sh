#!/usr/bin/env bash
# The same greeter in each language and world: the six starters of
# `gatehouse plugin new` (Rust, Python, JavaScript × gatehouse, wasi-http),
# built with their README's command, served by one gateway. Per plugin:
# component size; compile time cold (empty compile cache) and cached, from
# `gatehouse check`; CPU µs and wall time per request over one keep-alive
# connection (no queueing); linear memory per instance (the mean of
# /metrics' peak-memory histogram); and, for the large ones, how long a
# reload of new content takes to serve. Gateway on core 0, wrk on core 1;
# rounds interleaved.
#
#   bench/languages.sh                    # 2 rounds × 5 s
#   ROUNDS=3 DURATION=8 bench/languages.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-5}
CONNS=1
UP_PORT=18390 GH_PORT=18392 ADMIN_PORT=19392

. bench/lib.sh
need nginx nginx-light
need wrk wrk
need taskset util-linux
need npm npm
ports_free $UP_PORT $GH_PORT $ADMIN_PORT
./scripts/build-plugins.sh >/dev/null
cargo build --release -p gatehouse --bin gatehouse --quiet
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
gh=$PWD/target/release/gatehouse
if ! componentize-py --version 2>/dev/null | grep -q "$COMPONENTIZE_PY"; then
  python3 -m pip install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY"
fi

# name lang world build-command built-file
starters=(
  "rust-gatehouse rust gatehouse|cargo build --release --target wasm32-wasip2 --quiet|target/wasm32-wasip2/release/rust_gatehouse.wasm"
  "rust-wasi-http rust wasi-http|cargo build --release --target wasm32-wasip2 --quiet|target/wasm32-wasip2/release/rust_wasi_http.wasm"
  "python-gatehouse python gatehouse|componentize-py -d wit -w route-handler componentize app -o out.wasm|out.wasm"
  "python-wasi-http python wasi-http|componentize-py -d wit -w handler componentize app -o out.wasm|out.wasm"
  "js-gatehouse js gatehouse|npm install --silent --no-audit --no-fund && npm run --silent build|js-gatehouse.wasm"
  "js-wasi-http js wasi-http|npm install --silent --no-audit --no-fund && npm run --silent build|js-wasi-http.wasm"
)
mkdir -p "$work/routes" "$work/plugins"
names=()
for s in "${starters[@]}"; do
  IFS='|' read -r spec build file <<<"$s"
  read -r name lang world <<<"$spec"
  "$gh" plugin new "$name" --lang "$lang" --world "$world" --dir "$work/src/$name" >/dev/null
  (cd "$work/src/$name" && env -u CARGO_TARGET_DIR -u RUSTFLAGS sh -c "$build" >/dev/null)
  cp "$work/src/$name/$file" "$work/plugins/$name.wasm"
  names+=("$name")
done

fast_upstream_conf $UP_PORT
{
  printf 'service = "bench-upstream"\nupstream = "http://127.0.0.1:%s"\n\n[[route]]\nprefix = "/api"\nauth = "required"\n' $UP_PORT
  for name in "${names[@]}"; do
    printf '\n[[route]]\nprefix = "/p/%s"\nauth = "required"\nplugin = "%s"\n\n[route.settings]\ngreeting = "hello"\n' "$name" "$name"
  done
} >"$work/routes/bench.toml"
config() { # cache-dir (routes/ and plugins/ next to the config)
  printf '[server]\nlisten = "127.0.0.1:%s"\nadmin = "127.0.0.1:%s"\n[plugins]\ncache_dir = "%s"\ndeadline = "2s"\n' \
    $GH_PORT $ADMIN_PORT "$1"
}

echo "compile (gatehouse check, one plugin at a time): cold cache, then cached"
declare -A size cold warm
for name in "${names[@]}"; do
  mkdir -p "$work/one-$name/routes" "$work/one-$name/plugins"
  cp "$work/plugins/$name.wasm" "$work/one-$name/plugins/"
  printf 'service = "s"\nupstream = "http://127.0.0.1:%s"\n\n[[route]]\nprefix = "/p"\nauth = "public"\nplugin = "%s"\n' $UP_PORT "$name" >"$work/one-$name/routes/r.toml"
  config cache >"$work/one-$name/gatehouse.toml"
  size[$name]=$(stat -c %s "$work/plugins/$name.wasm")
  t0=$(date +%s%N); "$gh" --config "$work/one-$name/gatehouse.toml" check >/dev/null; t1=$(date +%s%N)
  "$gh" --config "$work/one-$name/gatehouse.toml" check >/dev/null; t2=$(date +%s%N)
  cold[$name]=$(((t1 - t0) / 1000000)) warm[$name]=$(((t2 - t1) / 1000000))
  printf '  %-18s %9s bytes   cold %6s ms   cached %5s ms\n' "$name" "${size[$name]}" "${cold[$name]}" "${warm[$name]}"
done

config cache >"$work/gatehouse.toml"
export GATEHOUSE_JWT_SECRET=bench-secret-bench-secret-bench-secret
TOKEN=$("$gh" token --sub 42 --tier pro --ttl 2h)
taskset -c 1 nginx -c "$work/upstream.conf" & pids+=($!)
GATEHOUSE_LOG=warn taskset -c 0 "$gh" --config "$work/gatehouse.toml" serve >"$work/gh.log" 2>&1 & pids+=($!); gh_pid=$!
for _ in $(seq 600); do
  curl -s "127.0.0.1:$ADMIN_PORT/admin/plugins" | grep -q '"optimizing":true' || { [ "$(curl -s -o /dev/null -w '%{http_code}' "127.0.0.1:$ADMIN_PORT/readyz")" = 200 ] && break; }
  sleep 0.1
done
for name in "${names[@]}"; do
  body=$(curl -s -H "Authorization: Bearer $TOKEN" "127.0.0.1:$GH_PORT/p/$name")
  grep -Eq '"user_id": ?"42"' <<<"$body" || { echo "$name answered: $body" >&2; cat "$work/gh.log" >&2; exit 1; }
done

echo
echo "per request: $ROUNDS rounds × ${DURATION}s, one connection, gateway on core 0, wrk on core 1"
targets=("${names[@]}")
for round in $(seq "$ROUNDS"); do
  echo "round $round"
  round_order "$round"
  for name in "${order[@]}"; do measure "$name" "http://127.0.0.1:$GH_PORT/p/$name" "$gh_pid"; done
done
echo
echo "median over $ROUNDS rounds (wall time per request: 1 / req/s on one connection):"
summarize "python vs rust (gatehouse):python-gatehouse:rust-gatehouse" "js vs rust (gatehouse):js-gatehouse:rust-gatehouse" \
  "wasi-http vs gatehouse (rust):rust-wasi-http:rust-gatehouse"

echo
echo "linear memory per instance (mean peak):"
metrics=$(curl -s "127.0.0.1:$ADMIN_PORT/metrics")
for name in "${names[@]}"; do
  awk -v n="plugin=\"$name\"" '
    index($0, "gatehouse_plugin_peak_memory_bytes_sum{") == 1 && index($0, n) { s += $NF }
    index($0, "gatehouse_plugin_peak_memory_bytes_count{") == 1 && index($0, n) { c += $NF }
    END { printf "  %-18s %8.2f MiB\n", substr(n, 9, length(n) - 9), c ? s / c / 1048576 : 0 }' <<<"$metrics"
done

echo
echo "reload of new content (a cold compile cache), from the rename to the new version serving:"
for name in python-gatehouse js-gatehouse; do
  for i in 1 2 3; do
    # A custom section with a nonce: the same component, new bytes.
    { cat "$work/plugins/$name.wasm"; printf '\x00\x0e\x05nonce%08d' "$i"; } >"$work/plugins/.$name.tmp"
    want=$(sha256sum "$work/plugins/.$name.tmp" | cut -d' ' -f1)
    t0=$(date +%s%N)
    mv "$work/plugins/.$name.tmp" "$work/plugins/$name.wasm"
    for _ in $(seq 3000); do
      curl -s "127.0.0.1:$ADMIN_PORT/admin/plugins" | grep -q "$want" && break
      sleep 0.005
    done
    t1=$(date +%s%N)
    printf '  %-18s reload %d: serving after %5d ms\n' "$name" "$i" $(((t1 - t0) / 1000000))
  done
done
