# Gatehouse: the two commands a newcomer needs are `make run` and `make test`.
.PHONY: run test audit fuzz build plugins lint k8s image fleet bench bench-instructions bench-observability bench-plugins bench-plugin-floor bench-reload bench-websocket bench-cold-start bench-isolation bench-languages pgo

# Build, start the stand-in services and the gateway with a development secret.
run: plugins
	./scripts/run-dev.sh

# Every test: the advisory check, unit tests, black-box tests over real
# sockets, formatting and lints.
test: plugins audit
	cargo fmt --all -- --check
	cd plugins && cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	cargo test --workspace

# Every Cargo.lock against the RustSec advisory snapshot, offline.
audit:
	./scripts/audit.sh

# Every fuzz target for FUZZ_SECONDS (default 60) each, on nightly.
fuzz:
	./scripts/fuzz.sh

build: plugins
	cargo build --release --workspace

# The bundled plugins (plugins/<name>/) built into plugins/<name>.wasm, and
# the test plugins (plugins/testing/) left in plugins/target/ for the tests.
plugins:
	./scripts/build-plugins.sh

# Renders deploy/k8s/overlays/example and validates it offline (schemas,
# gatehouse check); see docs/deploying.md.
k8s:
	./scripts/k8s.sh

# The production image (FROM scratch, the profile-guided static binary) with
# podman, checked; BUILD=release for the plain build. See docs/deploying.md.
image: plugins
	./scripts/image.sh

# Three replicas behind HAProxy through a plugin change, a rolling restart
# and a SIGKILL, under load: failed requests and convergence time.
fleet: plugins
	./bench/fleet.sh

# The profile-guided production build: target/pgo/release/gatehouse (see README.md).
pgo: plugins
	./bench/pgo.sh

# Gateway vs nginx vs the bare upstream, interleaved (see README.md).
bench:
	./bench/run.sh

# User-space instructions per proxied request, Gatehouse vs nginx (valgrind;
# exact on a noisy host).
bench-instructions:
	./bench/instructions.sh

# What metrics, trace context and the access log cost (and nginx's access
# log, for reference); BASE=<a build without them> to include that build.
bench-observability:
	./bench/observability.sh

# The hello plugin route vs a native route vs `wasmtime serve` (see README).
bench-plugins:
	./bench/plugins.sh

# wasmtime's own per-call cost (the floor under #5's goal) vs the hello template.
bench-plugin-floor:
	./bench/plugin-floor.sh

# WebSocket echo through the gateway vs direct, and memory per idle tunnel.
bench-websocket:
	./bench/websocket.sh

# Reload latency: last write of a changed plugin → first response from it.
bench-reload: plugins
	cargo bench -p gatehouse --bench reload

# Start-up with three large (Python) plugins, cold and warm compile cache.
bench-cold-start:
	./bench/cold-start.sh

# A native route's latency alone and beside a busy Python plugin route.
bench-isolation:
	./bench/isolation.sh

# The six starters (Rust, Python, JavaScript × our world, wasi:http): size,
# compile time, CPU and wall time per request, memory, reload of a large one.
bench-languages:
	./bench/languages.sh
