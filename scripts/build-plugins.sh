#!/usr/bin/env bash
# Builds every plugin in plugins/ for wasm32-wasip2 and copies the bundled
# ones into the drop folder as plugins/<name>.wasm. Needs only the rustup
# target (installed here if missing).
set -euo pipefail
cd "$(dirname "$0")/../plugins"
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
cargo build --quiet --release --target wasm32-wasip2 --workspace
out=target/wasm32-wasip2/release
for name in hello tier-gate polar-webhook; do
  # Copy then rename: a running gateway never sees half a file.
  cp "$out/${name//-/_}.wasm" ".$name.wasm.tmp"
  mv ".$name.wasm.tmp" "$name.wasm"
done
echo "plugins: $(cd . && ls ./*.wasm | tr '\n' ' ')"
