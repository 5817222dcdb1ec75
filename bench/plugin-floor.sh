#!/usr/bin/env bash
# What wasmtime itself costs per plugin call, under the `hello` template: the
# per-call bench (host/benches/plugin_call.rs: fresh Store, instantiate from
# the InstancePre, `handle`, drop) run on three components of the
# `route-handler` world, interleaved, ROUNDS rounds (default 5):
#
#   floor          bench/plugin-floor: answers `200 {}`, nothing else; no std,
#                  no imports, one core instance
#   floor-imports  the same, plus one `config.get` and one `log.write` call:
#                  the two shim core instances every plugin that uses the
#                  contract's imports has
#   hello          the shipped template (std, its JSON answer, one log line)
#
# Pinned to one core when there are two or more. Prints the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}

./scripts/build-plugins.sh >/dev/null
floor=bench/plugin-floor
built=$floor/target/wasm32-wasip2/release/plugin_floor.wasm
(cd "$floor" && cargo build --quiet --release --target wasm32-wasip2)
cp "$built" "$floor/target/floor.wasm"
(cd "$floor" && cargo build --quiet --release --target wasm32-wasip2 --features imports)
cp "$built" "$floor/target/floor-imports.wasm"
echo "building the bench (a few minutes the first time)..."
cargo bench --quiet -p gatehouse --bench plugin_call --no-run

pin=()
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then pin=(taskset -c 1); fi
wasms=("$floor/target/floor.wasm" "$floor/target/floor-imports.wasm" plugins/hello.wasm)
results=$(mktemp)
trap 'rm -f "$results"' EXIT
for round in $(seq "$ROUNDS"); do
  for wasm in "${wasms[@]}"; do
    if ! out=$(PLUGIN_BENCH_WASM="$wasm" "${pin[@]}" cargo bench --quiet -p gatehouse --bench plugin_call 2>&1); then
      echo "the bench failed on $wasm:" >&2; echo "$out" >&2; exit 1
    fi
    name=$(basename "$wasm" .wasm)
    inst=$(sed -n 's/^instantiate + drop: median \([0-9.]*\) µs.*/\1/p' <<<"$out")
    call=$(sed -n 's/^.*, instantiate + handle + drop: median \([0-9.]*\) µs.*/\1/p' <<<"$out")
    echo "round $round: $name: instantiate + drop $inst µs, instantiate + handle + drop $call µs"
    echo "$name $inst $call" >>"$results"
  done
done

echo
echo "median over $ROUNDS rounds (µs per call):"
printf '%-15s %20s %32s\n' component "instantiate + drop" "instantiate + handle + drop"
median() { # name column
  awk -v n="$1" -v c="$2" '$1 == n {print $c}' "$results" | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'
}
for wasm in "${wasms[@]}"; do
  name=$(basename "$wasm" .wasm)
  printf '%-15s %20s %32s\n' "$name" "$(median "$name" 2)" "$(median "$name" 3)"
done
