# Ember: the commands a developer and CI use. `make test` is what CI runs.
CARGO ?= cargo
RUN_EMBER = $(CARGO) run --release --quiet -p ember-cli --

.PHONY: all build release test lint fmt fmt-check demo bench bench-ps clean

all: build

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --release -p ember-cli

## test: the whole suite (unit, gRPC round trips, real-process integration tests)
test:
	$(CARGO) test --workspace

## lint: formatting and clippy exactly as CI checks them
lint: fmt-check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

## demo: in-process ps-server on loopback gRPC, load generator, measured figures
demo:
	$(RUN_EMBER) demo

## bench: criterion micro-benchmarks of the store (in-process rows/s)
bench:
	$(CARGO) bench -p ember-store --bench store

## bench-ps: ember ps and ember bench ps as separate processes, side by side with Redis
bench-ps: release
	scripts/bench-ps.sh

clean:
	$(CARGO) clean
