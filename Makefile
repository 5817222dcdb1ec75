# Gatehouse: the two commands a newcomer needs are `make run` and `make test`.
.PHONY: run test build lint bench

# Build, start the stand-in services and the gateway with a development secret.
run:
	./scripts/run-dev.sh

# Every test: unit tests, black-box tests over real sockets, formatting and lints.
test:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	cargo test --workspace

build:
	cargo build --release --workspace

# Gateway vs nginx vs the bare upstream, interleaved (see bench/README.md).
bench:
	./bench/run.sh
