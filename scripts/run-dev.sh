#!/usr/bin/env bash
# Builds Gatehouse, starts the five stand-in services on 8081-8085 and the
# gateway on :8080 (admin on 127.0.0.1:9901) with a development JWT secret.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "cargo is required: https://rustup.rs" >&2; exit 1; }
cargo build --release --workspace --quiet
[ -f plugins/hello.wasm ] || ./scripts/build-plugins.sh

export GATEHOUSE_JWT_SECRET="${GATEHOUSE_JWT_SECRET:-gatehouse-dev-secret-change-me-0123456789}"
# Development webhook secret for the polar-webhook plugin (base64 of "dev-webhook-secret").
export POLAR_WEBHOOK_SECRET="${POLAR_WEBHOOK_SECRET:-whsec_ZGV2LXdlYmhvb2stc2VjcmV0}"
./target/release/demo-upstreams &
demo=$!
trap 'kill $demo 2>/dev/null || true' EXIT
sleep 0.3

token=$(./target/release/gatehouse token --sub 42 --tier pro --ttl 24h)
cat <<MSG

Gatehouse is starting on http://localhost:8080 (admin: http://127.0.0.1:9901).
A development token for user 42 (tier pro), valid 24 h:

  export TOKEN=$token

Try:
  curl -s localhost:8080/api/areas -H "Authorization: Bearer \$TOKEN"      # 200, identity injected
  curl -s localhost:8080/api/areas                                         # 401
  curl -s localhost:8080/webhooks/polar -H 'X-User-ID: 1'                  # public, identity stripped
  curl -s 127.0.0.1:9901/admin/routes                                      # the route table
  curl -s localhost:8080/api/v1/hello -H "Authorization: Bearer \$TOKEN"   # the hello plugin answers
  curl -s localhost:8080/api/v1/knowledge/premium/x -H "Authorization: Bearer \$TOKEN"  # tier-gate: pro passes
  curl -s 127.0.0.1:9901/admin/plugins                                     # the loaded plugins

Ctrl-C stops both.

MSG
./target/release/gatehouse serve
