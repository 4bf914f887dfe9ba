# Ember: the commands a developer and CI use. `make test` is what CI runs.
CARGO ?= cargo
RUN_EMBER = $(CARGO) run --release --quiet -p ember-cli --

.PHONY: all deps build release install test lint fmt fmt-check demo bench bench-ps compare-peers deploy-check clean

all: build

## deps: what the build needs beyond Rust (libclang, clang, g++), from apt; nothing if present
deps:
	@scripts/install-deps.sh

build: deps
	$(CARGO) build --workspace

release: deps
	$(CARGO) build --release -p ember-cli

## install: the `ember` binary into ~/.cargo/bin (on PATH wherever rustup set Rust up)
install: deps
	$(CARGO) install --locked --path crates/cli

## test: the whole suite (unit, gRPC round trips, real-process integration tests)
test: deps
	$(CARGO) test --workspace

## deploy-check: render, validate (kubernetes-validate, checkov) and flag-check deploy/kustomize (also in make test)
deploy-check: deps
	$(CARGO) build -p ember-cli
	scripts/check-deploy.sh "$${CARGO_TARGET_DIR:-target}/debug/ember"

## lint: formatting and clippy exactly as CI checks them
lint: deps fmt-check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

## demo: DeepFM on an embedded cluster: train, publish + checkpoint, restore, serve, report
demo: deps
	$(RUN_EMBER) demo

## bench: criterion micro-benchmarks (store pull/push rows/s; model step and parsing examples/s)
bench:
	$(CARGO) bench -p ember-store --bench store
	$(CARGO) bench -p ember-store --bench cold_tier
	$(CARGO) bench -p ember-worker --bench model
	$(CARGO) bench -p ember-core --bench optim

## bench-ps: ember ps and ember bench ps as separate processes, side by side with Redis
bench-ps: release
	scripts/bench-ps.sh

## compare-peers: learning quality and speed beside VW and PyTorch (needs ../shared/peers/setup.sh)
compare-peers: release
	scripts/compare-peers.sh

clean:
	$(CARGO) clean
