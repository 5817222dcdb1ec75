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
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
UP_PORT=18090 NGINX_PORT=18091 GH_PORT=18092 GH_LOG_PORT=18093

need() {
  command -v "$1" >/dev/null && return
  [ -n "${APT_UPDATED:-}" ] || { apt-get update -qq; APT_UPDATED=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}
need nginx nginx-light
need wrk wrk
need taskset util-linux

for port in $UP_PORT $NGINX_PORT $GH_PORT $GH_LOG_PORT 19901 19902; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is already in use: stop whatever listens there first" >&2; exit 1
  fi
done

cargo build --release --workspace --quiet
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

nginx_conf() { # name port body
  cat > "$work/$1.conf" <<EOF
worker_processes 1;
master_process off;
daemon off;
pid $work/$1.pid;
error_log $work/$1.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/$1-body;
  proxy_temp_path $work/$1-proxy;
  keepalive_requests 1000000;
  $3
  server {
    listen 127.0.0.1:$2;
    keepalive_requests 1000000;
    $4
  }
}
EOF
}

nginx_conf upstream $UP_PORT "" 'location / { return 200 "ok\n"; }'
nginx_conf proxy $NGINX_PORT \
  "upstream up { server 127.0.0.1:$UP_PORT; keepalive 64; keepalive_requests 1000000; }" \
  'location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-User-ID "42";
      proxy_set_header X-User-Tier "pro";
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Request-ID $request_id;
      add_header X-Request-ID $request_id;
    }'

mkdir -p "$work/routes"
cat > "$work/routes/bench.toml" <<EOF
service = "bench-upstream"
upstream = "http://127.0.0.1:$UP_PORT"

[[route]]
prefix = "/api"
auth = "required"
EOF
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
sleep 1
for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || { echo "a server failed to start; see $work" >&2; exit 1; }; done

for port in $UP_PORT $NGINX_PORT $GH_PORT $GH_LOG_PORT; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$port/api/bench")
  [ "$code" = 200 ] || { echo "port $port answered $code" >&2; exit 1; }
done

ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# One measurement: name port pid → appends "name rps p99_us cpu_us_per_req".
measure() {
  local name=$1 port=$2 pid=$3 before after out rps p99 reqs
  before=$( [ "$pid" = - ] && echo 0 || cpu "$pid")
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$port/api/bench")
  after=$( [ "$pid" = - ] && echo 0 || cpu "$pid")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); print v} else if (v ~ /ms$/) {sub(/ms/,"",v); print v*1000} else {sub(/s/,"",v); print v*1000000}}' <<<"$out")
  local cpu_us=-
  [ "$pid" = - ] || cpu_us=$(awk -v d=$((after - before)) -v t="$ticks" -v n="$reqs" 'BEGIN {printf "%.1f", d * 1e6 / t / n}')
  echo "$name $rps $p99 $cpu_us" >> "$work/results"
  printf '  %-22s %10s req/s   p99 %8s µs   CPU %6s µs/req\n' "$name" "$rps" "$p99" "$cpu_us"
}

echo "bench: $ROUNDS rounds × ${DURATION}s, $CONNS connections, wrk -t1 on core 1, servers on core 0"
for round in $(seq "$ROUNDS"); do
  echo "round $round"
  measure upstream-direct $UP_PORT -
  measure nginx-proxy_pass $NGINX_PORT "$nginx_pid"
  measure gatehouse $GH_PORT "$gh_pid"
  measure gatehouse+access-log $GH_LOG_PORT "$gh_log_pid"
done

echo
echo "median over $ROUNDS rounds:"
awk '
  { rps[$1] = rps[$1] " " $2; p99[$1] = p99[$1] " " $3; cpu[$1] = cpu[$1] " " $4; if (!seen[$1]++) order[++n] = $1 }
  function median(list,   a, k, i, j, t) {
    k = split(list, a, " ")
    for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return a[int((k + 1) / 2)]
  }
  END {
    for (i = 1; i <= n; i++) { name = order[i]; m_rps[name] = median(rps[name]); m_p99[name] = median(p99[name]); m_cpu[name] = median(cpu[name])
      printf "  %-22s %10.0f req/s   p99 %8.0f µs   CPU %6s µs/req\n", name, m_rps[name], m_p99[name], m_cpu[name] }
    printf "\ngatehouse / nginx: throughput %.2f×, p99 %.2f×, CPU per request %.2f×\n", m_rps["gatehouse"] / m_rps["nginx-proxy_pass"], m_p99["gatehouse"] / m_p99["nginx-proxy_pass"], m_cpu["gatehouse"] / m_cpu["nginx-proxy_pass"]
  }' "$work/results"
