#!/usr/bin/env bash
# Gatehouse proxy benchmark: in one run and interleaved, the bare upstream,
# nginx proxy_pass (one worker, the same headers set) and Gatehouse (one
# worker thread, HS256 JWT verification) in front of the same fast upstream.
#
# Servers under test run on core 0; the load generator (wrk) and the upstream
# (nginx `return 200`) share core 1. Reports requests/s, p99 latency and the
# server's CPU µs per request, read from /proc/<pid>/stat (steadier than req/s).
#
#   bench/run.sh                 # 3 rounds × 10 s per target
#   ROUNDS=5 DURATION=20 CONNS=64 bench/run.sh
#   PGO=1 bench/run.sh           # also the profile-guided build of bench/pgo.sh
#   BASE=/path/to/gatehouse bench/run.sh   # also another build (say, main's before a change)
#   BUILDS="musl=target/x86_64-unknown-linux-musl/release/gatehouse pgo-musl=..." bench/run.sh
#                                # also any builds, each as name=path
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
UP_PORT=18090 NGINX_PORT=18091 GH_PORT=18092 GH_LOG_PORT=18093
PGO=${PGO:-}
BASE=${BASE:-}
PGO_BIN=${PGO_BIN:-target/pgo/release/gatehouse}
# Extra builds, name=path; each gets port 18094+k and admin port 19903+k.
read -r -a builds <<<"${BUILDS:-}"
[ -z "$PGO" ] || builds=("gatehouse-pgo=$PGO_BIN" "${builds[@]}")
[ -z "$BASE" ] || builds+=("gatehouse-base=$BASE")

. bench/lib.sh
need nginx nginx-light
need wrk wrk
need taskset util-linux
ports_free $UP_PORT $NGINX_PORT $GH_PORT $GH_LOG_PORT 19901 19902
for k in "${!builds[@]}"; do
  path=${builds[k]#*=}
  [ -x "$path" ] || { echo "${builds[k]}: not an executable${PGO:+ (the PGO build: run bench/pgo.sh first)}" >&2; exit 1; }
  ports_free $((18094 + k)) $((19903 + k))
done

cargo build --release --workspace --quiet
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

fast_upstream_conf $UP_PORT
nginx_proxy_conf $NGINX_PORT $UP_PORT

bench_routes $UP_PORT
gh_conf() { # name port admin-port
  cat > "$work/$1.toml" <<EOF
[server]
listen = "127.0.0.1:$2"
admin = "127.0.0.1:$3"
routes_dir = "routes"
EOF
}
gh_conf gatehouse $GH_PORT 19901
gh_conf gatehouse-log $GH_LOG_PORT 19902

export GATEHOUSE_JWT_SECRET=bench-secret-bench-secret-bench-secret
TOKEN=$(./target/release/gatehouse token --sub 42 --tier pro --ttl 2h)

taskset -c 1 nginx -c "$work/upstream.conf" & pids+=($!)
taskset -c 0 nginx -c "$work/proxy.conf" & pids+=($!); nginx_pid=$!
GATEHOUSE_LOG=warn taskset -c 0 ./target/release/gatehouse --config "$work/gatehouse.toml" serve --workers 1 >"$work/gh.log" 2>&1 & pids+=($!); gh_pid=$!
GATEHOUSE_LOG=info taskset -c 0 ./target/release/gatehouse --config "$work/gatehouse-log.toml" serve --workers 1 >"$work/gh-access.log" 2>&1 & pids+=($!); gh_log_pid=$!
ports=($UP_PORT $NGINX_PORT $GH_PORT $GH_LOG_PORT)
extra=()
for k in "${!builds[@]}"; do
  name=${builds[k]%%=*} path=${builds[k]#*=}
  gh_conf "$name" $((18094 + k)) $((19903 + k))
  GATEHOUSE_LOG=warn taskset -c 0 "$path" --config "$work/$name.toml" serve --workers 1 >"$work/$name.log" 2>&1 & pids+=($!)
  ports+=($((18094 + k)))
  extra+=("$name $((18094 + k)) $!")
done
sleep 1
for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || { echo "a server failed to start; see $work" >&2; exit 1; }; done

for port in "${ports[@]}"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$port/api/bench")
  [ "$code" = 200 ] || { echo "port $port answered $code" >&2; exit 1; }
done

echo "bench: $ROUNDS rounds × ${DURATION}s, $CONNS connections, wrk -t1 on core 1, servers on core 0"
# name port pid, in the order of odd rounds; even rounds run them reversed,
# so no target always follows the same one (or always runs last).
targets=("nginx-proxy_pass $NGINX_PORT $nginx_pid" "gatehouse $GH_PORT $gh_pid" "gatehouse+access-log $GH_LOG_PORT $gh_log_pid")
targets+=("${extra[@]}")
for round in $(seq "$ROUNDS"); do
  echo "round $round"
  measure upstream-direct "http://127.0.0.1:$UP_PORT/api/bench" -
  round_order "$round"
  for target in "${order[@]}"; do
    read -r name port pid <<<"$target"
    measure "$name" "http://127.0.0.1:$port/api/bench" "$pid"
  done
done

echo
echo "median over $ROUNDS rounds:"
ratios=("gatehouse / nginx:gatehouse:nginx-proxy_pass" "gatehouse+access-log / nginx:gatehouse+access-log:nginx-proxy_pass")
for build in "${builds[@]}"; do
  name=${build%%=*}
  ratios+=("$name / nginx:$name:nginx-proxy_pass" "$name / gatehouse:$name:gatehouse")
done
summarize "${ratios[@]}"
