#!/usr/bin/env bash
# Renders a kustomize overlay (default: the example) and checks it offline:
# `kubectl kustomize`, every object against the Kubernetes schemas in strict
# mode (kubernetes-validate, from PyPI, installed here if missing), and
# `gatehouse check` on the gatehouse.toml, routes and plugins its ConfigMaps
# would mount, with the example Secret's values.
#
#   scripts/k8s.sh                          # the example overlay
#   scripts/k8s.sh path/to/overlay          # yours
#   K8S_VERSION=1.35.0 scripts/k8s.sh       # the schemas of another release
#   JSON=out.json scripts/k8s.sh            # also the rendered objects as JSON
#   GATEHOUSE_BIN=path scripts/k8s.sh       # check with that binary (else a release build)
set -euo pipefail
cd "$(dirname "$0")/.."
overlay=${1:-deploy/k8s/overlays/example}
K8S_VERSION=${K8S_VERSION:-1.33.0}
VALIDATE_VERSION=1.37.0

command -v kubectl >/dev/null || { echo "k8s: kubectl is needed (kubectl kustomize)" >&2; exit 1; }
if ! python3 -c 'import kubernetes_validate' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check "kubernetes-validate==$VALIDATE_VERSION"
fi
# The example ships the bundled plugins: build them when they are missing.
if [ "$overlay" = deploy/k8s/overlays/example ]; then
  for name in hello tier-gate polar-webhook; do
    [ -f "plugins/$name.wasm" ] || ./scripts/build-plugins.sh
    cp "plugins/$name.wasm" "$overlay/plugins/$name.wasm"
  done
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
kubectl kustomize "$overlay" >"$work/all.yaml"
python3 -m kubernetes_validate --strict --quiet -k "$K8S_VERSION" "$work/all.yaml"
python3 - "$work" <<'PY'
import base64, json, os, sys, yaml
work = sys.argv[1]
objects = [o for o in yaml.safe_load_all(open(os.path.join(work, "all.yaml"))) if o]
json.dump(objects, open(os.path.join(work, "all.json"), "w"))
# The folders a pod mounts: config/, routes/ and plugins/ side by side.
def mount(prefix, folder):
    cms = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith(prefix)]
    assert len(cms) == 1, f"one ConfigMap {prefix}*, found {len(cms)}"
    os.makedirs(os.path.join(work, "etc", folder))
    for name, text in (cms[0].get("data") or {}).items():
        open(os.path.join(work, "etc", folder, name), "w").write(text)
    for name, data in (cms[0].get("binaryData") or {}).items():
        open(os.path.join(work, "etc", folder, name), "wb").write(base64.b64decode(data))
mount("gatehouse-config", "config")
mount("gatehouse-routes", "routes")
mount("gatehouse-plugins", "plugins")
secrets = [o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"].startswith("gatehouse-secrets")]
with open(os.path.join(work, "secrets.env"), "w") as out:
    for s in secrets:
        for k, v in (s.get("data") or {}).items():
            out.write(f"{k}={base64.b64decode(v).decode()}\n")
PY
# The pod's compile cache is an emptyDir; here, a temporary folder.
sed -i "s|^cache_dir = .*|cache_dir = \"$work/cache\"|" "$work/etc/config/gatehouse.toml"
bin=${GATEHOUSE_BIN:-}
if [ -z "$bin" ]; then
  cargo build --quiet --release -p gatehouse --bin gatehouse
  bin=./target/release/gatehouse
fi
(
  set -a
  . "$work/secrets.env"
  set +a
  "$bin" --config "$work/etc/config/gatehouse.toml" check
) >"$work/check.txt" 2>&1 || { cat "$work/check.txt" >&2; echo "k8s: gatehouse check refused the rendered configuration" >&2; exit 1; }
[ -z "${JSON:-}" ] || cp "$work/all.json" "$JSON"
echo "k8s: $overlay renders $(grep -c '^kind:' "$work/all.yaml") objects, valid against Kubernetes $K8S_VERSION (strict); gatehouse check: $(head -1 "$work/check.txt")"
