# Two commands do everything on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
RECIPE ?= recipes/tiny-r1.yaml
PYTEST_ARGS ?=
TEST_WORKERS ?= auto
BENCH_ARGS ?=
GPU_CHECK_ARGS ?=
# The second test environment: the versions the `vllm` extra resolves to (transformers, torch, TRL, ...), on CPU.
GPU_PINS ?= constraints/vllm-0.31.txt
GPU_PINS_VENV ?= .venv-gpu-pins

.PHONY: setup demo test test-gpu-pins lint bench gpu-check docs clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/posttrain run $(RECIPE)

# Two pytest-xdist workers of one torch thread each on a 2-core machine (TEST_WORKERS=0: one process).
test: setup
	$(VENV)/bin/ruff check .
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# The whole suite again under $(GPU_PINS) (the GPU install's versions, minus vLLM and CUDA) in $(GPU_PINS_VENV).
test-gpu-pins:
	@VENV=$(GPU_PINS_VENV) POSTTRAIN_CONSTRAINTS=$(GPU_PINS) bash scripts/setup.sh
	@$(GPU_PINS_VENV)/bin/python -c "import torch, transformers, trl; print(f'[test-gpu-pins] torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}')"
	POSTTRAIN_PINS=$(GPU_PINS) OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(GPU_PINS_VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

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
