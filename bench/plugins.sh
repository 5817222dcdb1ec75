#!/usr/bin/env bash
# Plugin benchmark, in one run and interleaved:
#   gatehouse-native  a plain proxied route (HS256 JWT) to a fast upstream
#   gatehouse-hello   the `hello` plugin route (HS256 JWT, identity, a fresh
#                     instance per request; the plugin answers itself)
#   wasmtime-serve    `wasmtime serve` 48 with an equivalent wasi:http hello
#                     component, at its fastest fresh-instance settings
#   gatehouse-floor   (FLOOR=1) a route whose plugin does nothing: the
#                     bench/plugin-floor component (no std, no imports,
#                     answers `200 {}`), what any plugin route costs at least
# Servers run on core 0, wrk (and the upstream) on core 1. Reports req/s, p99
# and the server's CPU µs per request from /proc/<pid>/stat.
#
#   bench/plugins.sh                       # 3 rounds × 10 s
#   ROUNDS=5 DURATION=20 bench/plugins.sh
#   WASMTIME=0 bench/plugins.sh            # without wasmtime serve (no install)
#   FLOOR=1 bench/plugins.sh               # also the floor plugin's route
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
UP_PORT=18190 GH_PORT=18192 WT_PORT=18193 ADMIN_PORT=19911
WASMTIME_VERSION=48.0.8

. bench/lib.sh
need nginx nginx-light
need wrk wrk
need taskset util-linux
WASMTIME=${WASMTIME:-1}
if [ "$WASMTIME" = 1 ] && ! wasmtime --version 2>/dev/null | grep -q "$WASMTIME_VERSION"; then
  echo "installing wasmtime-cli $WASMTIME_VERSION (cargo install --locked; ~10 minutes, once)"
  cargo install wasmtime-cli --version "$WASMTIME_VERSION" --locked --quiet
fi

ports_free $UP_PORT $GH_PORT $WT_PORT $ADMIN_PORT

./scripts/build-plugins.sh >/dev/null
cargo build --release --workspace --quiet
(cd bench/wasi-http-hello && cargo build --release --target wasm32-wasip2 --quiet)
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

plugin_setup $UP_PORT $GH_PORT $ADMIN_PORT
FLOOR=${FLOOR:-0}
if [ "$FLOOR" = 1 ]; then
  (cd bench/plugin-floor && cargo build --quiet --release --target wasm32-wasip2)
  cp bench/plugin-floor/target/wasm32-wasip2/release/plugin_floor.wasm "$work/plugins/floor.wasm"
  printf '\n[[route]]\nprefix = "/api/v1/floor"\nauth = "required"\nplugin = "floor"\n' >>"$work/routes/bench.toml"
fi

export GATEHOUSE_JWT_SECRET=bench-secret-bench-secret-bench-secret
TOKEN=$(./target/release/gatehouse token --sub 42 --tier pro --ttl 2h)

taskset -c 1 nginx -c "$work/upstream.conf" & pids+=($!)
GATEHOUSE_LOG=warn taskset -c 0 ./target/release/gatehouse --config "$work/gatehouse.toml" serve --workers 1 >"$work/gh.log" 2>&1 & pids+=($!); gh_pid=$!
if [ "$WASMTIME" = 1 ]; then
  taskset -c 0 wasmtime serve -Scli \
    -O pooling-allocator=y,pooling-memory-keep-resident=1048576,pooling-table-keep-resident=1048576,pooling-pagemap-scan=auto \
    --addr "127.0.0.1:$WT_PORT" bench/wasi-http-hello/target/wasm32-wasip2/release/wasi_http_hello.wasm >"$work/wt.log" 2>&1 & pids+=($!); wt_pid=$!
fi
for _ in $(seq 50); do
  { [ "$WASMTIME" != 1 ] || curl -s -o /dev/null "http://127.0.0.1:$WT_PORT/"; } && curl -s -o /dev/null "http://127.0.0.1:$GH_PORT/" && break
  sleep 0.2
done
for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || { echo "a server failed to start" >&2; cat "$work"/*.log >&2; exit 1; }; done

check() { # url expected-substring
  local body
  body=$(curl -s -H "Authorization: Bearer $TOKEN" "$1")
  [[ "$body" == *"$2"* ]] || { echo "$1 answered: $body" >&2; exit 1; }
}
check "http://127.0.0.1:$GH_PORT/api/bench" "ok"
check "http://127.0.0.1:$GH_PORT/api/v1/hello" '"user_id":"42"'
[ "$FLOOR" != 1 ] || check "http://127.0.0.1:$GH_PORT/api/v1/floor" "{}"
wait_optimized $ADMIN_PORT
[ "$WASMTIME" != 1 ] || check "http://127.0.0.1:$WT_PORT/hello" "hello, stranger"

echo "bench: $ROUNDS rounds × ${DURATION}s, $CONNS connections, wrk -t1 on core 1, servers on core 0"
for round in $(seq "$ROUNDS"); do
  echo "round $round"
  measure gatehouse-native "http://127.0.0.1:$GH_PORT/api/bench" "$gh_pid"
  measure gatehouse-hello "http://127.0.0.1:$GH_PORT/api/v1/hello" "$gh_pid"
  [ "$FLOOR" != 1 ] || measure gatehouse-floor "http://127.0.0.1:$GH_PORT/api/v1/floor" "$gh_pid"
  [ "$WASMTIME" != 1 ] || measure wasmtime-serve "http://127.0.0.1:$WT_PORT/hello" "$wt_pid"
done

echo
echo "median over $ROUNDS rounds:"
ratios=("hello plugin / native route:gatehouse-hello:gatehouse-native")
[ "$WASMTIME" != 1 ] || ratios+=("hello plugin / wasmtime serve:gatehouse-hello:wasmtime-serve")
[ "$FLOOR" != 1 ] || ratios+=("floor plugin / native route:gatehouse-floor:gatehouse-native")
summarize "${ratios[@]}"
