#!/usr/bin/env bash
# What request metrics, trace context and the access log cost on the native
# proxied route: CPU per request of a build without them (BASE), of this
# build with its access log off, and of this build with it on, in one run;
# and, for reference, what nginx's own access log costs it (proxy_pass with
# the log off, and on with a line of the same length, buffered and flushed
# every 50 ms as Gatehouse's is).
#
# Differences of a few per cent are below what one process per target can
# show on these machines: two processes of the *same* build differ by up to
# ±4 % (where each lands in memory and caches), whatever the round order.
# So every target runs as COPIES processes, started interleaved, and each
# target's median pools all its copies' rounds. Servers share core 0; wrk and
# the upstream share core 1; even rounds run the targets in reverse order.
#
#   BASE=/path/to/gatehouse-before bench/observability.sh
#   COPIES=2 ROUNDS=6 DURATION=6 BASE=... bench/observability.sh   # the defaults
#   bench/observability.sh                  # no BASE: the access log's cost only
set -euo pipefail
cd "$(dirname "$0")/.."

COPIES=${COPIES:-2}
ROUNDS=${ROUNDS:-6}
DURATION=${DURATION:-6}
CONNS=${CONNS:-32}
BASE=${BASE:-}
UP_PORT=18390

. bench/lib.sh
need nginx nginx-light
need wrk wrk
need taskset util-linux
[ -z "$BASE" ] || [ -x "$BASE" ] || { echo "BASE=$BASE is not an executable" >&2; exit 1; }

cargo build --release -p gatehouse --bin gatehouse --quiet
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

fast_upstream_conf $UP_PORT
bench_routes $UP_PORT
export GATEHOUSE_JWT_SECRET=bench-secret-bench-secret-bench-secret
TOKEN=$(./target/release/gatehouse token --sub 42 --tier pro --ttl 2h)
taskset -c 1 nginx -c "$work/upstream.conf" & pids+=($!)

# The reference: nginx proxy_pass as bench/run.sh runs it, log off and on.
nginx_proxy_conf 18391 $UP_PORT
sed -e "s|access_log off;|log_format gh '\$time_iso8601 INFO gatehouse::access: request request_id=\"\$request_id\" trace_id=\$request_id method=\$request_method path=\$uri route=\"/api\" service=\"bench-upstream\" upstream=\"\$upstream_addr\" user=\"42\" status=\$status latency_us=\$request_time';\n  access_log $work/nginx-access.log gh buffer=256k flush=50ms;|" "$work/proxy.conf" >"$work/proxy-log.conf"

# name level binary: one process per copy, the copies of all targets
# started interleaved so no target owns the early (or late) slots.
specs=()
[ -z "$BASE" ] || specs+=("before:warn:$BASE")
specs+=("metrics+trace:warn:$PWD/target/release/gatehouse" "metrics+trace+log:info:$PWD/target/release/gatehouse" "nginx:off:-" "nginx+log:on:-")
targets=()
n=0
for copy in $(seq "$COPIES"); do
  for spec in "${specs[@]}"; do
    IFS=: read -r name level bin <<<"$spec"
    n=$((n + 1))
    port=$((18400 + n))
    ports_free $port $((19950 + n))
    if [ "$bin" = - ]; then
      # nginx: the same config on this copy's port, its own pid and temp files.
      sed -e "s|127.0.0.1:18391|127.0.0.1:$port|; s|$work/proxy|$work/g$n|g" \
        "$work/$([ "$level" = on ] && echo proxy-log || echo proxy).conf" >"$work/g$n.conf"
      taskset -c 0 nginx -c "$work/g$n.conf" & pids+=($!)
    else
      cat > "$work/g$n.toml" <<CONF
[server]
listen = "127.0.0.1:$port"
admin = "127.0.0.1:$((19950 + n))"
routes_dir = "routes"
CONF
      # The log goes to a file, as it would to a collector's pipe.
      GATEHOUSE_LOG=$level taskset -c 0 "$bin" --config "$work/g$n.toml" serve --workers 1 >"$work/g$n.log" 2>&1 & pids+=($!)
    fi
    targets+=("$name $port $!")
  done
done
sleep 1
for t in "${targets[@]}"; do
  read -r name port pid <<<"$t"
  kill -0 "$pid" 2>/dev/null || { echo "$name on $port did not start:" >&2; cat "$work"/*.log >&2; exit 1; }
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$port/api/bench")
  [ "$code" = 200 ] || { echo "$name on $port answered $code" >&2; exit 1; }
done

echo "observability: $COPIES copies × $ROUNDS rounds × ${DURATION}s, $CONNS connections, wrk on core 1, servers on core 0"
for round in $(seq "$ROUNDS"); do
  round_order "$round"
  for t in "${order[@]}"; do
    read -r name port pid <<<"$t"
    measure "$name" "http://127.0.0.1:$port/api/bench" "$pid" >/dev/null
  done
  echo "  round $round done"
done
grep -q request_id "$work/g$((${#specs[@]} - 2))".log || { echo "Gatehouse's access log stayed empty" >&2; exit 1; }
grep -q request_id "$work/nginx-access.log" || { echo "nginx's access log stayed empty" >&2; exit 1; }
printf 'bytes per line: Gatehouse %s, nginx %s\n' \
  "$(grep -m1 request_id "$work/g$((${#specs[@]} - 2))".log | wc -c)" "$(head -1 "$work/nginx-access.log" | wc -c)"

echo
echo "median over $COPIES copies × $ROUNDS rounds:"
ratios=("Gatehouse's access log, on / off:metrics+trace+log:metrics+trace" "nginx's access log, on / off:nginx+log:nginx")
[ -z "$BASE" ] || ratios+=("metrics+trace / before:metrics+trace:before" "metrics+trace+log / before (the issue's 3 % goal):metrics+trace+log:before")
summarize "${ratios[@]}"
