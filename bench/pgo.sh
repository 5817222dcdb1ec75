#!/usr/bin/env bash
# A profile-guided (PGO) build of the gateway for production use:
#   1. builds an instrumented gatehouse (target/pgo-gen/),
#   2. trains it on the work a gateway does: proxied requests with an HS256
#      token, a plugin route (`hello`), and refused requests (bad token, no
#      route), against a fast upstream (nginx `return 200`),
#   3. merges the profile and builds target/pgo/release/gatehouse with it.
#
#   bench/pgo.sh        # or `make pgo`; ~25 min the first time on 2 cores
#   PGO=1 bench/run.sh  # the proxy bench with the PGO build as another target
#   TARGET=x86_64-unknown-linux-musl bench/pgo.sh
#                       # the static build the image ships (scripts/image.sh
#                       # runs this): target/pgo/<target>/release/gatehouse
#   PROFILE=path.profdata bench/pgo.sh
#                       # no training: build with a profile kept from an
#                       # earlier run
#
# The normal `cargo build --release` is untouched: the PGO build has its own
# target folders. Needs the rustup `llvm-tools` component (installed here).
set -euo pipefail
cd "$(dirname "$0")/.."

TRAIN=${TRAIN:-6} # seconds of load per training workload
TARGET=${TARGET:-} # a rustc target triple; empty: the host's
PROFILE=${PROFILE:-} # a merged .profdata to build with instead of training
CONNS=${CONNS:-32}
UP_PORT=18290 GH_PORT=18292 ADMIN_PORT=19921

. bench/lib.sh
need nginx nginx-light
need wrk wrk
ports_free $UP_PORT $GH_PORT $ADMIN_PORT

sysroot=$(rustc --print sysroot)
profdata=$(find "$sysroot" -name llvm-profdata -type f 2>/dev/null | head -1)
if [ -z "$profdata" ]; then
  rustup component add llvm-tools
  profdata=$(find "$sysroot" -name llvm-profdata -type f | head -1)
fi

profile=$PWD/target/pgo-profile${TARGET:+-$TARGET}
target_args=() out=release
# Paths as the binary records them (panic locations, generated sources) and
# as the profile names local functions: the same whatever the checkout's or
# the target folder's path, so a profile fits any checkout of its commit
# (two builds still differ in ThinLTO's symbol suffixes: pgo-build.md).
# C code compiled on the way (mimalloc) records __DATE__ and __TIME__: the
# last commit's time instead of the clock's (honoured by gcc).
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 0)
export SOURCE_DATE_EPOCH
remap() { # target-dir
  echo "--remap-path-prefix=$PWD=/src --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo --remap-path-prefix=$PWD/$1=/target"
}
if [ -n "$TARGET" ]; then
  rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"
  target_args=(--target "$TARGET") out=$TARGET/release
fi
train() {
  rm -rf "$profile"
  mkdir -p "$profile/raw"
  ./scripts/build-plugins.sh >/dev/null
  echo "pgo: building the instrumented gateway (target/pgo-gen)"
  # The folder compiled in is a fixed one, so the flags (and cargo's cache of
  # this build) do not depend on where the repository is; LLVM_PROFILE_FILE
  # below says where the profiles really go.
  RUSTFLAGS="-Cprofile-generate=/tmp/pgo/raw $(remap target/pgo-gen)" \
    cargo build --release -p gatehouse --bin gatehouse --target-dir target/pgo-gen "${target_args[@]}" --quiet

  work=$(mktemp -d)
  pids=()
  cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
  trap cleanup EXIT

  plugin_setup $UP_PORT $GH_PORT $ADMIN_PORT

  gatehouse=target/pgo-gen/$out/gatehouse
  export GATEHOUSE_JWT_SECRET=pgo-training-secret-pgo-training-secret
  TOKEN=$(LLVM_PROFILE_FILE=/dev/null $gatehouse token --sub 42 --tier pro --ttl 2h)
  nginx -c "$work/upstream.conf" & pids+=($!)
  LLVM_PROFILE_FILE="$profile/raw/serve-%p.profraw" GATEHOUSE_LOG=warn $gatehouse --config "$work/gatehouse.toml" serve --workers 1 >"$work/gh.log" 2>&1 & gh_pid=$!; pids+=($gh_pid)
  for _ in $(seq 50); do
    curl -s -o /dev/null "http://127.0.0.1:$GH_PORT/" && break
    sleep 0.2
  done
  base=http://127.0.0.1:$GH_PORT
  for path in /api/bench /api/v1/hello; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "$base$path")
    [ "$code" = 200 ] || { echo "the instrumented gateway answered $code on $path" >&2; cat "$work/gh.log" >&2; exit 1; }
  done

  plugin=$((TRAIN / 2)) refused=$((TRAIN / 4 + 1))
  echo "pgo: training (${TRAIN}s proxied, ${plugin}s plugin, ${refused}s bad token, ${refused}s no route)"
  wrk -t1 -c"$CONNS" -d"${TRAIN}s" -H "Authorization: Bearer $TOKEN" "$base/api/bench?page=2" >/dev/null
  wrk -t1 -c"$CONNS" -d"${plugin}s" -H "Authorization: Bearer $TOKEN" "$base/api/v1/hello" >/dev/null
  wrk -t1 -c"$CONNS" -d"${refused}s" -H "Authorization: Bearer not.a.token" "$base/api/bench" >/dev/null
  wrk -t1 -c"$CONNS" -d"${refused}s" -H "Authorization: Bearer $TOKEN" "$base/nowhere" >/dev/null

  # The profile is written when the process exits: drain and stop it.
  kill -TERM "$gh_pid"
  wait "$gh_pid" || { echo "the instrumented gateway did not exit cleanly" >&2; cat "$work/gh.log" >&2; exit 1; }
  "$profdata" merge -o "$profile/merged.profdata" "$profile/raw"
  # Cargo does not track the profile's contents, only the flags: a name made
  # from its hash makes a new profile rebuild everything with it.
  sum=$(sha256sum "$profile/merged.profdata" | cut -c1-16)
  mv "$profile/merged.profdata" "$profile/gatehouse-$sum.profdata"
}

if [ -n "$PROFILE" ]; then
  [ -f "$PROFILE" ] || { echo "PROFILE=$PROFILE: no such file" >&2; exit 1; }
  used=$(realpath "$PROFILE")
else
  train
  used=$profile/gatehouse-$sum.profdata
fi

echo "pgo: building the optimized gateway (target/pgo)"
PGO_DIR=${PGO_DIR:-target/pgo} # another folder: to check that a second build is the same
RUSTFLAGS="-Cprofile-use=$used $(remap "$PGO_DIR")" \
  cargo build --release -p gatehouse --bin gatehouse --target-dir "$PGO_DIR" "${target_args[@]}" --quiet
# Which profile made this binary (scripts/image.sh labels the image with it).
echo "$(sha256sum "$used" | cut -d' ' -f1) $used" >"$PGO_DIR/$out/gatehouse.profile"
echo "pgo: built $PGO_DIR/$out/gatehouse with $used"
