# The few targets people expect; each is a one-liner over the real commands.
# Under CI=true the compiled speedups are required: a missing or broken extension is an error.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
REQUIRE_EXT := $(if $(filter true,$(CI)),HARBOR_ROUTER_REQUIRE_EXTENSIONS=1,)
STAMP := $(VENV)/.installed

# Prerequisites run in the order written (system packages before the build).
.NOTPARALLEL:
.PHONY: install system-deps test test-py lint demo run bench bench-gate soak clean

install: $(STAMP)

# Editable install; setuptools builds the extensions in place (harbor_router/_*_c*.so and the
# compiled data plane, harbor_router/_compiled/, built from the package's own sources: a changed
# source rebuilds it).
$(STAMP): pyproject.toml setup.py $(wildcard _speedups/*.pyx _speedups/*.pxd) _speedups/dataplane.py $(wildcard harbor_router/*.py)
	test -x $(PY) || $(PYTHON) -m venv $(VENV) && $(REQUIRE_EXT) $(PY) -m pip install -q -e '.[test]' && touch $@

system-deps:
	bash tests/system-deps.sh

test: system-deps install
	$(REQUIRE_EXT) $(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS)

# The same suite on the pure-Python twins (CI runs both).
test-py: system-deps install
	HARBOR_ROUTER_NO_EXTENSIONS=1 $(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy

demo: system-deps install
	$(PY) tests/demo.py

run: install
	$(PY) -m harbor_router

# The load harness: router vs nginx vs a plain aiohttp proxy, same run (benchmarks/loadtest.py);
# writes benchmarks/results/latest.{json,md,png}. The pytest micro benchmarks:
# $(PY) -m pytest -p no:cacheprovider benchmarks/
BENCH_ARGS ?=
bench: system-deps install
	$(PY) -c 'import matplotlib' 2>/dev/null || $(PY) -m pip install -q 'matplotlib>=3.7'
	$(PY) benchmarks/loadtest.py $(BENCH_ARGS)

# Short run, manifest GET only: exits 1 when router/nginx or router/aiohttp req per CPU-second
# falls under its floor (FLOORS in benchmarks/loadtest.py).
bench-gate: system-deps install
	$(PY) benchmarks/loadtest.py --gate $(BENCH_ARGS)

# Soak (a benchmark, not a test): 10 minutes of mixed traffic, the router's RSS and open fds
# sampled every 10 s (benchmarks/soak.py); writes benchmarks/results/soak.json.
# SOAK_ARGS='--duration 60' for a short look.
SOAK_ARGS ?=
soak: system-deps install
	$(PY) benchmarks/soak.py $(SOAK_ARGS)

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .benchmarks .demo $(STAMP) && find . -path ./$(VENV) -prune -o \( -name '__pycache__' -o -name '*.so' -o -path './_speedups/*.c' -o -path './_speedups/*.html' \) -print0 | xargs -0 rm -rf
