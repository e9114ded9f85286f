# kubetrain — developer entry points. `make demo` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: help tools images manifests manifests-check venv lint fmt typecheck crds crds-check test test-unit test-cluster demo cluster-up cluster-down bench bench-quick clean

help:
	@echo "make demo      local control plane + operator + the iris example trained"
	@echo "make test      lint, types and every test tier (unit + real cluster)"
	@echo "make venv      the project's virtualenv (.venv) with all extras"
	@echo "make crds      regenerate crds/ (and the chart's copy) from the typed API"
	@echo "make bench     trainer overhead + operator load benchmarks (long); make bench-quick: a few minutes"
	@echo "make images    build the operator and trainer images (buildah, cached OCI archives)"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/pip install -q uv
	$(BIN)/uv pip install -q --python $(BIN)/python -e '.[operator,trainer,dev,s3,cli]'
	@rm -f $(VENV)/.installed-*; touch $@

venv: $(STAMP)

# System tools the tests use: Prometheus and promtool (Debian's package), openssl for the dev cluster's PKI,
# headless Chromium for the model report test (tests/trainer/test_report.py); buildah, runc, debootstrap and
# strip (binutils) for the images (hack/build-images), flock (util-linux).
tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v openssl >/dev/null \
		&& command -v chromium >/dev/null || { \
		echo "installing prometheus, openssl, chromium (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			prometheus openssl chromium >/dev/null; }
	@command -v buildah >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null \
		&& command -v strip >/dev/null && command -v flock >/dev/null || { \
		echo "installing buildah, runc, debootstrap, binutils (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			buildah runc debootstrap binutils util-linux >/dev/null; }

# The trainer and operator images (buildah; cached by input hash). Prints *_IMAGE, *_ARCHIVE, *_IMAGE_ID.
images: tools
	hack/build-images

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

# Benchmarks (reports in bench/reports/). The operator benchmark starts the dev cluster (set KUBETRAIN_RUN_DIR
# for a private one); BENCH_ARGS passes options, e.g. BENCH_ARGS="--repo ../other-checkout --soak-seconds 120".
bench: venv
	$(BIN)/python bench/trainer_overhead.py
	$(BIN)/python bench/operator_load.py $(BENCH_ARGS)

bench-quick: venv
	$(BIN)/python bench/operator_load.py --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
