#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind
# (callgrind): Gatehouse (HS256 auth, the full header contract) and nginx
# proxy_pass (the same headers set), in front of the same upstream.
#
# Instruction counts do not depend on what else the machine is doing, so
# this tells a 2 % change apart where CPU-time benchmarks on a noisy host
# cannot. It counts user space only (the kernel's share of a request,
# about two thirds here, is the same for both). One request at a time over
# one kept-alive connection, after a warm-up.
#
#   bench/instructions.sh            # 3000 requests each
#   REQUESTS=10000 bench/instructions.sh
#   GATEHOUSE_LOG=info bench/instructions.sh   # with the access log on
#   KEEP=/tmp/cg bench/instructions.sh   # keep the profiles for callgrind_annotate
#   CONNS=32 bench/instructions.sh       # under load: wrk, 32 connections, 10 s
#   BASE=/path/to/gatehouse bench/instructions.sh   # also another build (main before a change)
#   HELLO=1 bench/instructions.sh        # Gatehouse's `hello` plugin route instead (nginx still proxies)
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-3000}
# CONNS > 1: wrk keeps that many connections busy for DURATION seconds
# instead (the instructions per request a loaded server runs).
CONNS=${CONNS:-1} DURATION=${DURATION:-10}
UP_PORT=18190 NGINX_PORT=18191 GH_PORT=18192

. bench/lib.sh
need nginx nginx-light
need valgrind valgrind
need curl curl
ports_free $UP_PORT $NGINX_PORT $GH_PORT 19911

cargo build --release -p gatehouse --bin gatehouse --quiet
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$work"/*.cg.1 "$KEEP"/ 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

fast_upstream_conf $UP_PORT
nginx_proxy_conf $NGINX_PORT $UP_PORT
bench_routes $UP_PORT
GH_PATH=/api/bench
if [ "${HELLO:-0}" = 1 ]; then
  ./scripts/build-plugins.sh >/dev/null
  cp plugins/hello.wasm "$work/plugins/"
  printf '\n[[route]]\nprefix = "/api/v1/hello"\nauth = "required"\nplugin = "hello"\n' >>"$work/routes/bench.toml"
  GH_PATH=/api/v1/hello
fi
# Few plugin slots: valgrind cannot reserve the default pool's address space.
cat > "$work/gatehouse.toml" <<EOF
[server]
listen = "127.0.0.1:$GH_PORT"
admin = "127.0.0.1:19911"
routes_dir = "routes"

[plugins]
max_instances = 2
# Under valgrind code runs ~50× slower: every plugin would count as slow and
# move to the plugin threads, which it does not outside it.
slow_call = "10s"
EOF

export GATEHOUSE_JWT_SECRET=bench-secret-bench-secret-bench-secret GATEHOUSE_LOG=${GATEHOUSE_LOG:-warn}
TOKEN=$(./target/release/gatehouse token --sub 42 --tier pro --ttl 2h)
nginx -c "$work/upstream.conf" & pids+=($!)

# name port command... → instructions per request
count() {
  local name=$1 port=$2 vg code path=/api/bench
  [ "$port" = "$NGINX_PORT" ] || path=$GH_PATH
  shift 2
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/$name.cg" "$@" >"$work/$name.log" 2>&1 &
  vg=$!; pids+=($vg)
  for _ in $(seq 120); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$port$path" || true)
    [ "$code" = 200 ] && break
    sleep 0.5
  done
  [ "$code" = 200 ] || { echo "$name did not answer 200 (got $code); see $work/$name.log" >&2; exit 1; }
  curl -s -o /dev/null -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$port$path?warm=[1-300]"
  if [ "$path" != /api/bench ]; then
    # Compiling takes minutes under valgrind.
    wait_optimized 19911 600
    curl -s -o /dev/null -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$port$path?warm=[1-300]"
  fi
  callgrind_control -i on "$vg" >/dev/null 2>&1
  local n=$REQUESTS
  if [ "$CONNS" -gt 1 ]; then
    out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$port$path")
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    codes=$(grep -q "Non-2xx" <<<"$out" && echo "non-2xx" || echo "$n 200")
  else
    codes=$(curl -s -o /dev/null -w '%{http_code}\n' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$port$path?n=[1-$REQUESTS]" | sort | uniq -c)
  fi
  callgrind_control -i off "$vg" >/dev/null 2>&1
  callgrind_control -d "$vg" >/dev/null 2>&1
  kill "$vg"; wait "$vg" 2>/dev/null || true
  grep -qv ' 200$' <<<"$codes" && { echo "$name: not every answer was 200: $codes" >&2; exit 1; }
  # The dump (…cg.1) holds exactly the instrumented requests.
  callgrind_annotate "$work/$name.cg".1 2>/dev/null | awk -v n="$n" '/PROGRAM TOTALS/ {gsub(",", "", $1); printf "%.0f\n", $1 / n}' >"$work/$name.per"
  printf '  %-18s %8s instructions per request\n' "$name" "$(cat "$work/$name.per")"
}

if [ "$CONNS" -gt 1 ]; then
  need wrk wrk
  echo "instructions: wrk, $CONNS connections for ${DURATION}s each, user space only"
else
  echo "instructions: $REQUESTS requests, one kept-alive connection, user space only"
fi
count nginx-proxy_pass $NGINX_PORT nginx -c "$work/proxy.conf"
count gatehouse $GH_PORT ./target/release/gatehouse --config "$work/gatehouse.toml" serve --workers 1
if [ -n "${BASE:-}" ]; then
  # Builds from before `slow_call` existed refuse the key (they never offload).
  grep -v '^slow_call' "$work/gatehouse.toml" >"$work/base.toml"
  count gatehouse-base $GH_PORT "$BASE" --config "$work/base.toml" serve --workers 1
  awk -v g="$(cat "$work/gatehouse.per")" -v b="$(cat "$work/gatehouse-base.per")" 'BEGIN {printf "gatehouse / gatehouse-base: %.3f× the instructions per request\n", g / b}'
fi
awk -v g="$(cat "$work/gatehouse.per")" -v n="$(cat "$work/nginx-proxy_pass.per")" 'BEGIN {printf "gatehouse / nginx: %.2f× the instructions per request\n", g / n}'
