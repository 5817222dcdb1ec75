#!/usr/bin/env bash
# The fleet: three gatehouse replicas sharing one routes/ and plugins/ folder
# behind HAProxy (Debian's; health checks on each replica's /readyz), under a
# bounded wrk load through the balancer, in three scenarios:
#   change   a plugin (hello.wasm, new bytes) and a route file change while
#            traffic flows: failed requests, and how long until every replica
#            reports the new plugin sha256 and the new route on its admin port;
#   rolling  each replica in turn gets SIGTERM (its /readyz turns 503, HAProxy
#            stops sending, it drains and exits) and a new one takes its place;
#   kill     one replica gets SIGKILL mid-load.
# A failed request is a socket error or a non-2xx answer seen by wrk.
#
#   bench/fleet.sh                 # 3 replicas, 32 connections
#   CONNS=64 bench/fleet.sh
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-32}
FRONT=18500 DEMO=18511 # demo services on 18511-18515
PORTS=(18521 18522 18523) ADMINS=(19521 19522 19523)

. bench/lib.sh
need haproxy haproxy
need wrk wrk
need curl curl
ports_free $FRONT 18511 18512 18513 18514 18515 "${PORTS[@]}" "${ADMINS[@]}"
cargo build --release -p gatehouse --bins --quiet
[ -f plugins/hello.wasm ] || ./scripts/build-plugins.sh

work=$(mktemp -d)
declare -A pid=()
others=()
cleanup() {
  {
    for p in "${pid[@]}" "${others[@]}"; do kill -9 "$p" || true; done
    wait
  } 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

./target/release/demo-upstreams --base-port $DEMO >"$work/demo.log" 2>&1 & others+=($!)
mkdir -p "$work/routes" "$work/plugins"
for f in routes/*.toml; do
  sed -E "s#127\.0\.0\.1:808([1-5])#127.0.0.1:1851\1#" "$f" >"$work/routes/$(basename "$f")"
done
cp plugins/hello.wasm plugins/tier-gate.wasm plugins/polar-webhook.wasm "$work/plugins/"
export GATEHOUSE_JWT_SECRET=fleet-secret-fleet-secret-fleet-secret-01 POLAR_WEBHOOK_SECRET=whsec_ZmxlZXQ=
TOKEN=$(./target/release/gatehouse token --sub 42 --tier pro --ttl 2h)

start() { # replica index
  local i=$1
  cat >"$work/g$i.toml" <<CONF
[server]
listen = "127.0.0.1:${PORTS[i]}"
admin = "127.0.0.1:${ADMINS[i]}"
routes_dir = "routes"
plugins_dir = "plugins"
shutdown_grace = "10s"
[plugins]
cache_dir = "cache-$i"
CONF
  GATEHOUSE_LOG=warn ./target/release/gatehouse --config "$work/g$i.toml" serve >>"$work/g$i.log" 2>&1 &
  pid[$i]=$!
  for _ in $(seq 200); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "127.0.0.1:${ADMINS[i]}/readyz")" = 200 ] && return 0
    sleep 0.05
  done
  echo "replica $i did not become ready; see $work/g$i.log" >&2
  exit 1
}
for i in 0 1 2; do start $i; done

cat >"$work/haproxy.cfg" <<CFG
global
  maxconn 4096
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  retries 3
  option redispatch 1
  retry-on all-retryable-errors
frontend front
  bind 127.0.0.1:$FRONT
  default_backend fleet
backend fleet
  balance roundrobin
  option httpchk GET /readyz
  http-check expect status 200
  default-server inter 200ms fall 1 rise 2
  server g0 127.0.0.1:${PORTS[0]} check port ${ADMINS[0]}
  server g1 127.0.0.1:${PORTS[1]} check port ${ADMINS[1]}
  server g2 127.0.0.1:${PORTS[2]} check port ${ADMINS[2]}
CFG
haproxy -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 & others+=($!)
sleep 1
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "127.0.0.1:$FRONT/api/v1/hello")
[ "$code" = 200 ] || { echo "the balancer answered $code" >&2; exit 1; }

# wrk through the balancer for $1 seconds in the background; `failed` waits
# for it and sets $result: socket errors plus non-2xx answers, of all.
load() {
  wrk -t1 -c"$CONNS" -d"${1}s" -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$FRONT/api/v1/hello" >"$work/wrk.out" 2>&1 &
  wrk_pid=$!
}
failed() {
  wait "$wrk_pid" || true
  result=$(awk '/requests in/ {n=$1} /Non-2xx/ {bad+=$NF} /Socket errors/ {for (i=3; i<=NF; i+=2) {v=$(i+1); gsub(",", "", v); bad+=v}} END {printf "%d of %d", bad, n}' "$work/wrk.out")
}
now_ms() { date +%s%3N; }

echo "fleet: 3 replicas behind HAProxy, wrk $CONNS connections on /api/v1/hello (the hello plugin)"

# 1. A plugin and a route file change under load.
load 8
sleep 2
new_sha=$( { cat plugins/hello.wasm; printf '\x00\x08\x05fleetv2'; } | tee "$work/.hello.tmp" | sha256sum | cut -d' ' -f1)
t0=$(now_ms)
mv "$work/.hello.tmp" "$work/plugins/hello.wasm" # a custom section appended: new bytes, same code
printf '\n[[route]]\nprefix = "/api/v1/fleet-check"\nauth = "public"\n' >>"$work/routes/user.toml"
converged=
for _ in $(seq 300); do
  all=1
  for i in 0 1 2; do
    curl -s "127.0.0.1:${ADMINS[i]}/admin/plugins" | grep -q "$new_sha" || all=
    curl -s "127.0.0.1:${ADMINS[i]}/admin/routes" | grep -q '/api/v1/fleet-check' || all=
  done
  if [ -n "$all" ]; then converged=$(($(now_ms) - t0)); break; fi
  sleep 0.02
done
[ -n "$converged" ] || { echo "change: the replicas did not all take the new plugin and route within 6 s" >&2; exit 1; }
failed
echo "  change:  $result requests failed; every replica served the new plugin (sha256 ${new_sha:0:12}) and route $converged ms after the write"

# 2. A rolling restart under load.
load 20
sleep 1
for i in 0 1 2; do
  kill -TERM "${pid[$i]}"
  wait "${pid[$i]}" 2>/dev/null || true
  start "$i"
  sleep 1 # HAProxy's `rise 2` at 200 ms
done
failed
echo "  rolling: $result requests failed (SIGTERM, drain, restart, one replica at a time)"

# 3. SIGKILL one replica under load.
load 6
sleep 2
{ kill -9 "${pid[1]}" && wait "${pid[1]}"; } 2>/dev/null || true
failed
echo "  kill:    $result requests failed (replica 1 killed with SIGKILL mid-load)"
