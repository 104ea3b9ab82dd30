# Two commands do everything on a fresh machine:  `make demo`  and  `make test`.
# Both create the virtual environment on first use. An environment that already has torch (e.g. a
# CUDA build) keeps it: set VENV to that environment, or `pip install -e .[dev]` into it directly.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.probe-installed

.PHONY: setup demo test lint bench

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/probe prune tiny:llava_next --method wanda --pool text --sparsity 0.5 --nsamples 16 --out runs/demo-wanda-text
	$(BIN)/probe prune tiny:llava_next --method sparsegpt --pattern 2:4 --nsamples 16 --out runs/demo-sparsegpt-2of4

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/bench_prune.py
