# Gleepost realtime gateway — developer commands.
CARGO ?= cargo

.PHONY: run test test-js lint build chart-check bench chaos fuzz

## run: the gateway in dev mode on the embedded broker (prints a token and commands)
# Built first, with cargo's progress shown (a first build takes a few minutes), then run quietly.
run:
	@echo "make run: building gleepost-gateway (the first build takes a few minutes)…"
	$(CARGO) build -p gleepost-gateway
	$(CARGO) run -q -p gleepost-gateway -- --dev

## test: formatting, clippy, every unit and end-to-end test, then the JS client's unit and browser tests
test: lint
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace
	$(MAKE) test-js

## test-js: the JS client (clients/js): npm ci from the lockfile, then npm test (type check, unit tests, headless Chromium against target/debug/gleepost-gateway)
test-js:
	cd clients/js && npm ci --no-audit --no-fund && npm test

## lint: cargo fmt --check and clippy with warnings as errors (also the fuzzing feature and targets)
lint:
	$(CARGO) fmt --all -- --check
	rustfmt --edition 2021 --check fuzz/fuzz_targets/*.rs
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy -p gleepost-gateway --features fuzzing --all-targets -- -D warnings

## build: release build of every binary
build:
	$(CARGO) build --release --workspace --bins

## bench: benchmark suite (release build, own redis-server or 3-shard Redis Cluster + 2 gateways, pinned; ~25–40 min, `--runs-api 1` ≈ 6 min less) → docs/benchmarks.md
bench:
	python3 scripts/bench.py

## chaos: chaos suite with a loss ledger (release build, own redis-server + 2 gateways, each fault in turn; ≤ 6 min) → docs/reliability.md
chaos:
	$(CARGO) build --release -p gleepost-gateway -p gleepost-tests --bins
	target/release/chaos --out docs/reliability.md

## chart-check: offline Helm chart checks (helm lint/template, k8s schemas, yamllint, promtool)
chart-check:
	scripts/chart-check.sh

## fuzz: every fuzz target for FUZZ_SECONDS (default 60) each, one at a time (cargo-fuzz on stable; docs/fuzzing.md)
FUZZ_SECONDS ?= 60
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh
