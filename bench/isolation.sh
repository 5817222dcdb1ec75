#!/usr/bin/env bash
# Does a slow plugin hold up other routes? One gateway (default workers) with
# a native proxied route and a Python plugin route (`gatehouse plugin new
# --lang python`, componentize-py: milliseconds of CPU per request). The
# native route's latency is measured alone, then while a second wrk keeps the
# Python route busy. Gateway on core 0, wrk and the upstream on core 1.
#
# Slow plugins run on the plugin threads, below the I/O workers' priority
# (`plugins.threads_nice`, default 19); PLUGINS adds `[plugins]` lines.
#
#   bench/isolation.sh                 # 8 s per phase
#   DURATION=15 bench/isolation.sh
#   PLUGINS='threads_nice = 10' bench/isolation.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-8}
UP_PORT=18290 GH_PORT=18292 ADMIN_PORT=19292

. bench/lib.sh
need nginx nginx-light
need wrk wrk
need taskset util-linux
ports_free $UP_PORT $GH_PORT $ADMIN_PORT
cargo build --release -p gatehouse --bin gatehouse --quiet
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

python_plugin "$work/py"
plugin_setup $UP_PORT $GH_PORT $ADMIN_PORT "$work/py/py.wasm" /py
[ -z "${PLUGINS:-}" ] || echo "$PLUGINS" >>"$work/gatehouse.toml"

export GATEHOUSE_JWT_SECRET=bench-secret-bench-secret-bench-secret
TOKEN=$(./target/release/gatehouse token --sub 42 --tier pro --ttl 2h)
taskset -c 1 nginx -c "$work/upstream.conf" & pids+=($!)
GATEHOUSE_LOG=warn taskset -c 0 ./target/release/gatehouse --config "$work/gatehouse.toml" serve >"$work/gh.log" 2>&1 & pids+=($!)
for _ in $(seq 600); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "127.0.0.1:$ADMIN_PORT/readyz")" = 200 ] && break
  sleep 0.1
done
# Until the Python plugin serves optimized code (a cold cache starts on baseline code).
for _ in $(seq 600); do
  curl -s "127.0.0.1:$ADMIN_PORT/admin/plugins" | grep -q '"optimizing":false' && break
  sleep 0.1
done
for path in /api/x /py; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "127.0.0.1:$GH_PORT$path")
  [ "$code" = 200 ] || { echo "$path answered $code" >&2; cat "$work/gh.log" >&2; exit 1; }
done

native() { # label → native route's req/s and latency percentiles
  local out
  out=$(taskset -c 1 wrk -t1 -c16 -d"${DURATION}s" --latency -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$GH_PORT/api/x")
  printf '  %-32s native: %8s req/s, p50 %s, p99 %s\n' "$1" "$(awk '/Requests\/sec/ {print $2}' <<<"$out")" \
    "$(awk '$1 == "50%" {print $2}' <<<"$out")" "$(awk '$1 == "99%" {print $2}' <<<"$out")"
}

echo "isolation: gateway on core 0 (default workers), wrk on core 1, ${DURATION}s per phase"
native "alone"
taskset -c 1 wrk -t1 -c4 -d"$((DURATION + 2))s" --latency -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$GH_PORT/py" >"$work/py.out" &
py=$!
sleep 1
native "beside 4 busy Python connections"
wait "$py"
printf '  %-32s python: %8s req/s, p50 %s, p99 %s, %s answers not 2xx (504: past the deadline)\n' "(the Python route meanwhile)" \
  "$(awk '/Requests\/sec/ {print $2}' "$work/py.out")" "$(awk '$1 == "50%" {print $2}' "$work/py.out")" \
  "$(awk '$1 == "99%" {print $2}' "$work/py.out")" "$(awk '/Non-2xx/ {print $5}' "$work/py.out" | grep . || echo 0)"
native "alone again"
