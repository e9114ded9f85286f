# kubetrain — developer entry points. `make demo` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The stamp names pyproject.toml and the install recipe (bump VENV_RECIPE when the install line changes).
VENV_RECIPE := 3
STAMP := $(VENV)/.installed-$(shell (cat pyproject.toml; echo $(VENV_RECIPE)) | sha256sum | cut -c1-12)

.PHONY: help tools images manifests manifests-check venv lint fmt typecheck crds crds-check test test-unit test-cluster demo cluster-up cluster-down bench bench-quick bench-cold clean

help:
	@echo "make demo      local cluster (real kubelet, needs root) + operator from the chart + iris trained"
	@echo "make test      lint, types and every test tier (unit + real cluster)"
	@echo "make venv      the project's virtualenv (.venv) with all extras"
	@echo "make crds      regenerate crds/ (and the chart's copy) from the typed API"
	@echo "make bench     trainer overhead + operator load benchmarks (long); make bench-quick: a few minutes; make bench-cold: cold + warm make demo"
	@echo "make images    build the operator and trainer images (buildah, cached OCI archives)"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/pip install -q uv
	$(BIN)/uv pip install -q --python $(BIN)/python -e '.[operator,trainer,dev,s3,cli,mlflow]'
	@# Bytecode now, once: the suite starts hundreds of Python processes, and where PYTHONDONTWRITEBYTECODE is
	@# set none of them would keep what it compiled (scikit-learn, pandas, kopf, checkov ... on every start).
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib >/dev/null || true
	@rm -f $(VENV)/.installed-*; touch $@

venv: $(STAMP)

# System packages (Debian): Prometheus and promtool for the monitoring tests; openssl for the dev cluster's
# PKI; containerd, runc, the CNI plugins, iproute2 for the dev cluster's real nodes; buildah, debootstrap,
# strip (binutils), flock (util-linux), gcc/libc6-dev (static pause binary) and busybox-static for the images;
# headless Chromium for the model report test (tests/trainer/test_report.py). apt-get runs only when one is missing.
APT_PACKAGES := prometheus openssl containerd runc containernetworking-plugins iproute2 buildah debootstrap \
	binutils util-linux gcc libc6-dev busybox-static chromium
tools:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing" $$missing "(apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

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

# TEST_WORKERS: pytest-xdist workers (0: one process, in order). Most cluster tests wait on pods, not on the CPU.
# Each cluster test is one unit (own namespace, own operator); the other modules, and test_kueue.py (Kueue on
# the shared cluster), go to one worker whole; the tests that bring up a private dev cluster all go to one worker,
# one after the other (tests/conftest.py). Measured on 2 cores, warm, 2026-12-04: one process 2,870 s, three
# workers 1,524 s (load average 8-17: the CPU is then the bound, so more workers do not help here; four, with the
# private clusters side by side, overloaded it on 2026-12-03).
TEST_WORKERS ?= 3
# PYTEST_ARGS: more pytest options, e.g. PYTEST_ARGS="--durations=30 --junitxml=report.xml".
PYTEST_ARGS ?=
# The tests cache our own sources' bytecode too (PYTHONDONTWRITEBYTECODE unset for them; __pycache__ is ignored
# by git and by the image input hashes).
PYTEST := env -u PYTHONDONTWRITEBYTECODE $(BIN)/pytest
PYTEST_PARALLEL := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder)

test-unit: venv
	$(PYTEST) $(PYTEST_PARALLEL) $(PYTEST_ARGS) -m "not cluster" tests

# The shared dev cluster is started (binaries and images built when their inputs changed) before pytest, so that
# no test's timeout and no xdist worker waiting for another's `up` covers a long first build. The tests' `cluster`
# fixture then finds it running and stops it at the end (KUBETRAIN_KEEP_CLUSTER=1 keeps it).
CLUSTER_UP = if [ -z "$$KUBETRAIN_TEST_KUBECONFIG" ]; then hack/dev-cluster up >/dev/null; fi

test-cluster: venv tools
	$(CLUSTER_UP)
	$(PYTEST) $(PYTEST_PARALLEL) $(PYTEST_ARGS) -m cluster tests

test: venv tools lint typecheck
	$(CLUSTER_UP)
	$(PYTEST) $(PYTEST_PARALLEL) $(PYTEST_ARGS) tests

cluster-up: venv tools
	hack/dev-cluster up

cluster-down:
	hack/dev-cluster down

demo: venv tools
	hack/demo

# Benchmarks (reports in bench/reports/). The operator benchmark starts the dev cluster (set KUBETRAIN_RUN_DIR
# for a private one); BENCH_ARGS passes options, e.g. BENCH_ARGS="--repo ../other-checkout --soak-seconds 120".
bench: venv
	@# Both benchmarks run and write their reports; a missed goal in either fails the target at the end.
	rc=0; $(BIN)/python bench/trainer_overhead.py || rc=$$?; \
	$(BIN)/python bench/operator_load.py $(BENCH_ARGS) || rc=$$?; exit $$rc

bench-quick: venv
	$(BIN)/python bench/operator_load.py --quick $(BENCH_ARGS)

# `make demo` with every cache empty, then warm (root, an idle machine, ~25 min): bench/reports/cold-start-*.md
bench-cold:
	bench/cold_start.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
