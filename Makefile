# Two commands do everything: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: demo demo-city test lint bench bench-quick clean venv

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[demo]'
	touch $(VENV)/.installed $@

$(VENV)/.installed-hub: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[hub]'
	touch $(VENV)/.installed $@

# the tests run the demo's pieces too: dev and demo extras
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev,demo]'
	touch $(VENV)/.installed $(VENV)/.installed-demo $(VENV)/.installed-hub $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed-demo
	$(BIN)/collector demo -c config/demo.yaml $(if $(DURATION),--duration $(DURATION),)

# three enterprises' collectors in two counties feed one hub (local mosquitto and PostgreSQL; docs/hub.md)
demo-city: $(VENV)/.installed-hub
	$(BIN)/python -m collector.demo_city $(if $(DURATION),--duration $(DURATION),) $(if $(PORT),--port $(PORT),)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# two workers (pytest-xdist): most tests wait on sockets and subprocesses, not the CPU; TEST_WORKERS=0 runs
# in one process
TEST_WORKERS ?= 2

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# End to end, side by side with ThingsBoard IoT Gateway (installed into bench/.peer-venv on first use);
# rewrites docs/BENCHMARKS.md. ARGS=--quick (or `make bench-quick`): under 3 minutes; ARGS=--no-peer skips the peer.
bench: $(STAMP)
	$(BIN)/python bench/e2e.py $(ARGS)

bench-quick: $(STAMP)
	$(BIN)/python bench/e2e.py --quick $(ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache state
