# kubetrain — developer entry points. `make demo` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: help tools manifests manifests-check venv lint fmt typecheck crds crds-check test test-unit test-cluster demo cluster-up cluster-down bench clean

help:
	@echo "make demo      local control plane + operator + the iris example trained"
	@echo "make test      lint, types and every test tier (unit + real cluster)"
	@echo "make venv      the project's virtualenv (.venv) with all extras"
	@echo "make crds      regenerate crds/ (and the chart's copy) from the typed API"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/pip install -q uv
	$(BIN)/uv pip install -q --python $(BIN)/python -e '.[operator,trainer,dev,s3]'
	@rm -f $(VENV)/.installed-*; touch $@

venv: $(STAMP)

# System tools the tests use: Prometheus and promtool (Debian's package), openssl for the dev cluster's PKI.
tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v openssl >/dev/null || { \
		echo "installing prometheus, openssl (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			prometheus openssl >/dev/null; }

manifests:
	hack/render-manifests

manifests-check:
	hack/render-manifests --check

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: venv
	$(BIN)/mypy
	$(BIN)/mypy --strict -p kubetrain_operator -p kubetrain_api

crds: venv
	$(BIN)/python -m kubetrain_api.crdgen --out crds --chart helm/kubetrain/crds

test-unit: venv
	$(BIN)/pytest -m "not cluster" tests

test-cluster: venv
	$(BIN)/pytest -m cluster tests

test: venv tools lint typecheck
	$(BIN)/pytest tests

cluster-up: venv
	hack/dev-cluster up

cluster-down:
	hack/dev-cluster down

demo: venv
	hack/demo

bench: venv
	$(BIN)/python bench/trainer_overhead.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
