# hotshard: the two set-up commands are `make demo` and `make test`; each installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=
DEMO_ARGS ?=
# The chart's render and lint tests use helm when it is on PATH; the e2e build's pinned helm
# is used when it has been built (the first `make test` builds it after the unit tier).
HELM_BIN_DIR := $(firstword $(wildcard $(or $(HOTSHARD_E2E_CACHE),$(HOME)/.cache/hotshard-e2e)/helm-*/bin))

.PHONY: demo test lint unit integration e2e bench bench-dataplane bench-engine system-deps schemas clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

venv: $(STAMP)

system-deps:
	@scripts/install-system-deps.sh

## The main job: the whole loop on this machine (local mode).
demo: $(STAMP) system-deps
	$(BIN)/hotshard demo $(DEMO_ARGS)

## Every test tier CI runs: lint, unit, integration (real processes on 127.0.0.1), and e2e (a
## real Kubernetes control plane on 127.0.0.1; the first run builds it, about 12-15 minutes).
test: lint unit integration e2e

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: $(STAMP)
	$(if $(HELM_BIN_DIR),PATH="$(HELM_BIN_DIR):$$PATH") $(BIN)/pytest -q tests/unit $(PYTEST_ARGS)

integration: $(STAMP) system-deps
	$(BIN)/pytest -q tests/integration $(PYTEST_ARGS)

## Strategies side by side on the local fleet, both scenarios, about 10 minutes; writes
## bench/results/strategies.{json,md} and PNGs (docs/benchmarks.md). Niced: the box is shared.
## BENCH_ARGS=--repeat=3 takes the median of three rounds (about 30 minutes).
bench: $(STAMP) system-deps
	nice -n 10 $(BIN)/python -m bench.strategies $(BENCH_ARGS)

bench-dataplane: $(STAMP) system-deps
	$(BIN)/python -m bench.dataplane

bench-engine: $(STAMP)
	$(BIN)/python -m bench.engine

schemas: $(STAMP)
	$(BIN)/python -m hotshard.schemas

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

## The end-to-end tier on a real Kubernetes control plane on 127.0.0.1 (docs/e2e.md). The first
## build compiles Kubernetes from source into ~/.cache/hotshard-e2e; later runs reuse it.
.PHONY: e2e-build cluster-up cluster-down

e2e-build:
	nice -n 19 e2e/build.sh

cluster-up: e2e-build
	e2e/cluster.sh up

cluster-down:
	e2e/cluster.sh down

# With KUBECONFIG set the suite runs against that cluster, so nothing local is built.
e2e: $(STAMP)
	@if [ -z "$$KUBECONFIG" ]; then $(MAKE) --no-print-directory e2e-build; fi
	$(BIN)/pytest -q tests/e2e $(PYTEST_ARGS)

## The fleet model at 10M requests/s and at the local fleet's size (docs/simulation.md): every
## strategy, both scenarios; writes bench/results/simulation.json and .md.
.PHONY: simulate
simulate: $(STAMP)
	nice $(BIN)/hotshard simulate
