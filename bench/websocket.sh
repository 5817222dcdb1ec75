#!/usr/bin/env bash
# WebSocket benchmark (host/benches/websocket.rs): echo throughput and added
# latency through the gateway against the service directly, interleaved in
# one run, and the gateway's memory per idle tunnel. Gateway on core 0, the
# echo service and the load generator on core 1.
#
#   bench/websocket.sh                                  # 3 rounds × 10 s, 10,000 idle tunnels
#   ROUNDS=5 DURATION=20 CONNS=64 WINDOW=8 SIZE=1024 IDLE=10000 bench/websocket.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
need taskset util-linux
need nginx nginx-light
# Each idle tunnel is two sockets in the gateway (and one each in the
# service and here); the processes inherit this shell's open-file limit.
ulimit -n "$(ulimit -Hn)"
limit=$(ulimit -n)
fit=$(( (limit - 100) / 2 ))
if [ -z "${IDLE:-}" ] && [ "$fit" -lt 10000 ]; then
  echo "the open-file limit is $limit (raising it needs CAP_SYS_RESOURCE): $fit idle tunnels instead of 10,000"
  export IDLE=$fit
fi
exec cargo bench -p gatehouse --bench websocket --quiet
