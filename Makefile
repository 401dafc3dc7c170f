# Gleepost realtime gateway — developer commands.
CARGO ?= cargo

.PHONY: run test lint build chart-check bench

## run: the gateway in dev mode on the embedded broker (prints a token and commands)
run:
	$(CARGO) run -q -p gleepost-gateway -- --dev

## test: formatting, clippy, every unit and end-to-end test
test: lint
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

## lint: cargo fmt --check and clippy with warnings as errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

## build: release build of every binary
build:
	$(CARGO) build --release --workspace --bins

## bench: benchmark suite (release build, own redis-server or 3-shard Redis Cluster + 2 gateways, pinned; ~13 min) → docs/benchmarks.md
bench:
	python3 scripts/bench.py

## chart-check: offline Helm chart checks (helm lint/template, k8s schemas, yamllint, promtool)
chart-check:
	scripts/chart-check.sh
