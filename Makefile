# Two commands do everything on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
RECIPE ?= recipes/tiny-r1.yaml
PYTEST_ARGS ?=
TEST_WORKERS ?= auto
BENCH_ARGS ?=
GPU_CHECK_ARGS ?=

.PHONY: setup demo test lint bench gpu-check docs clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/posttrain run $(RECIPE)

# Two pytest-xdist workers of one torch thread each on a 2-core machine (TEST_WORKERS=0: one process).
test: setup
	$(VENV)/bin/ruff check .
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) -m benchmarks.run $(BENCH_ARGS)

# The GPU paths (bf16 training, vLLM rollouts and weight sync, ZeRO-3, resume) on one GPU, offline; see README.
gpu-check: setup
	$(PY) -m benchmarks.gpu_check $(GPU_CHECK_ARGS)

# Pages generated from the code: the recipe reference.
docs: setup
	$(PY) -c "from posttrain.recipe.reference import render; from posttrain.stages import KINDS; print(render(KINDS), end='')" > docs/recipe-reference.md

clean:
	rm -rf runs .pytest_cache
