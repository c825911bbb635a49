# Two commands do everything on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
RECIPE ?= recipes/tiny-r1.yaml
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: setup demo test lint bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/posttrain run $(RECIPE)

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) -m benchmarks.run $(BENCH_ARGS)

clean:
	rm -rf runs .pytest_cache
