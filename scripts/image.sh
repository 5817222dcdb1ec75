#!/usr/bin/env bash
# Builds the production image with podman (Debian's; a FROM scratch image
# needs no registry) and checks it: user, entrypoint, exposed ports, size,
# and the image's own binary running `gatehouse check` on the shipped routes
# and bundled plugins inside a copy of the image's filesystem (podman image
# mount + chroot: running containers does not work in every VM's cgroup
# setup, chroot does).
#
#   scripts/image.sh                 # gatehouse:<version>, the profile-guided build
#   PROFILE=x.profdata scripts/image.sh   # ... from a kept profile (no training)
#   BUILD=release scripts/image.sh   # the plain release build (minutes, not ~25)
#   TAG=gatehouse:dev scripts/image.sh
#   CHECK_ONLY=1 scripts/image.sh    # check an image already built
#
# The PGO build is bench/pgo.sh for the musl target: it trains an
# instrumented binary on proxied, plugin and refused requests (nginx and wrk
# needed), or takes PROFILE. The image is labelled with the commit and the
# profile's sha256; the same binary gives the same image (rebuilding from the
# same profile gives an equivalent binary, not yet the same bytes: see
# docs/decisions/pgo-build.md).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=x86_64-unknown-linux-musl
VERSION=$(awk -F'"' '/^version/ {print $2; exit}' host/Cargo.toml)
TAG=${TAG:-gatehouse:$VERSION}
BUILD=${BUILD:-pgo}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

need() { command -v "$1" >/dev/null || { echo "image: $1 is needed (apt-get install $2)" >&2; exit 1; }; }
need podman podman
work=$(mktemp -d)
mounted=
cleanup() {
  [ -z "$mounted" ] || podman image unmount "$TAG" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

if [ -z "${CHECK_ONLY:-}" ]; then
  need musl-gcc musl-tools
  rustup target list --installed | grep -qx "$TARGET" || rustup target add "$TARGET"
  labels=(--label "org.opencontainers.image.version=$VERSION"
    --label "org.opencontainers.image.revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)")
  case $BUILD in
    pgo)
      TARGET=$TARGET ./bench/pgo.sh
      bin=target/pgo/$TARGET/release/gatehouse
      labels+=(--label "dev.gatehouse.pgo-profile.sha256=$(cut -d' ' -f1 "$bin.profile")") ;;
    release)
      cargo build --quiet --release --target "$TARGET" -p gatehouse --bin gatehouse
      bin="$CARGO_TARGET_DIR/$TARGET/release/gatehouse" ;;
    *) echo "image: BUILD=$BUILD: pgo or release" >&2; exit 1 ;;
  esac
  # Static, or it would not start on scratch.
  if command -v file >/dev/null && file "$bin" | grep -q "dynamically linked"; then echo "image: $bin is not static" >&2; exit 1; fi
  mkdir -p "$work/ctx/rootfs/etc/gatehouse/config" "$work/ctx/rootfs/etc/gatehouse/routes" \
    "$work/ctx/rootfs/etc/gatehouse/plugins" "$work/ctx/rootfs/var/cache/gatehouse"
  # Debug info off (137 → 34 MB); symbols stay, so a panic's backtrace names functions.
  strip --strip-debug -o "$work/ctx/gatehouse" "$bin"
  cp deploy/k8s/base/gatehouse.toml "$work/ctx/rootfs/etc/gatehouse/config/gatehouse.toml"
  # Same bytes, same layers: timestamps fixed (SOURCE_DATE_EPOCH, the last commit's).
  epoch=$(git log -1 --format=%ct 2>/dev/null || echo 0)
  find "$work/ctx" -exec touch -h -d "@$epoch" {} +
  podman build --quiet --timestamp "$epoch" "${labels[@]}" -t "$TAG" -f deploy/image/Containerfile "$work/ctx" >/dev/null
fi

# What the image says about itself.
user=$(podman image inspect "$TAG" --format '{{.Config.User}}')
entrypoint=$(podman image inspect "$TAG" --format '{{json .Config.Entrypoint}}')
ports=$(podman image inspect "$TAG" --format '{{json .Config.ExposedPorts}}')
size=$(podman image inspect "$TAG" --format '{{.Size}}')
layers=$(podman image inspect "$TAG" --format '{{len .RootFS.Layers}}')
[ "$user" = 65532:65532 ] || { echo "image: runs as '$user', not 65532:65532" >&2; exit 1; }
[ "$entrypoint" = '["/gatehouse"]' ] || { echo "image: entrypoint $entrypoint" >&2; exit 1; }
[ "$ports" = '{"8080/tcp":{}}' ] || { echo "image: exposes $ports, not only 8080" >&2; exit 1; }

# Its binary, in its filesystem, loading the shipped routes and plugins.
mnt=$(podman image mount "$TAG"); mounted=1
cp -a "$mnt" "$work/root"
podman image unmount "$TAG" >/dev/null; mounted=
files=$(cd "$work/root" && find . -mindepth 1 | sort | tr '\n' ' ')
for name in hello tier-gate polar-webhook; do
  [ -f "plugins/$name.wasm" ] || ./scripts/build-plugins.sh
  cp "plugins/$name.wasm" "$work/root/etc/gatehouse/plugins/"
done
cp deploy/k8s/base/routes/*.toml "$work/root/etc/gatehouse/routes/"
check=$(GATEHOUSE_JWT_SECRET=image-check-secret-image-check-secret-0123 POLAR_WEBHOOK_SECRET=whsec_aW1hZ2UtY2hlY2s= \
  chroot --userspec=65532:65532 "$work/root" /gatehouse --config /etc/gatehouse/config/gatehouse.toml check 2>&1) ||
  { echo "$check" >&2; echo "image: gatehouse check failed inside the image" >&2; exit 1; }
profile=$(podman image inspect "$TAG" --format '{{index .Config.Labels "dev.gatehouse.pgo-profile.sha256"}}')
echo "image: $TAG, $((size / 1024 / 1024)) MiB in $layers layers, user $user, entrypoint $entrypoint, exposes $ports"
if [ -n "$profile" ]; then echo "image: build profile-guided (profile sha256 ${profile:0:16}…)"; else echo "image: build release (no profile)"; fi
echo "image: files: $files"
echo "image: inside it, $(grep -m1 '^ok:' <<<"$check")"
