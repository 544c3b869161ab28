# One-command set-up, demo and tests. See README.md.
PYTHON ?= python3
VENV ?= .venv
# Override for other machines, e.g. a CPU-only wheel index or another CUDA build:
#   make setup TORCH_SPEC="torch==2.5.1 torchvision==0.20.1 --index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check

.PHONY: setup test test-fast demo lint clean gpu-check gpu-study

setup: $(VENV)/.installed

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip "setuptools>=70" wheel

# The stamps record the step's inputs, so a second `make setup` does nothing when nothing changed.
$(VENV)/.torch: | $(VENV)/bin/python
	$(PIP) install --quiet $(TORCH_SPEC)
	echo "$(TORCH_SPEC)" > $@

$(VENV)/.detectron2: tools/install_detectron2.py $(VENV)/.torch
	$(PY) tools/install_detectron2.py
	touch $@

$(VENV)/.installed: setup.py $(VENV)/.detectron2
	$(PIP) install --quiet -e ".[dev,export,wsi]"
	touch $@

test: setup
	$(PY) -m pytest

# The quick loop (under 2 minutes on a 2-core CPU): no end-to-end (`slow`) or GPU (`cuda`) tests.
test-fast: setup
	$(PY) -m pytest -m "not slow and not cuda"

demo: setup
	$(PY) tools/demo.py --output output/demo $(ARGS)

lint: setup
	$(PY) -m ruff check .

# On one GPU, within 8 minutes: the `cuda` tests (AMP training, evaluation, tiled prediction,
# TorchScript export, one-GPU launch) and the throughput benchmark, whose table (with the
# GPU's name) replaces the one between the gpu-check markers of docs/benchmarks.md.
gpu-check:
	@nvidia-smi -L >/dev/null 2>&1 || { echo "gpu-check: no NVIDIA GPU here (nvidia-smi -L failed); run it on a machine with one" >&2; exit 2; }
	@$(MAKE) --no-print-directory setup
	@$(PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu-check: torch ' + torch.__version__ + ' sees no CUDA device (a CPU-only build? see TORCH_SPEC)')"
	timeout 300 $(PY) -m pytest -m cuda tests/tools/test_cuda.py -q -rs -p no:cacheprovider
	timeout 150 $(PY) tools/benchmark.py --group throughput --device cuda --repeats 10 --doc docs/benchmarks.md

# On one GPU, within about 8 minutes: items 4 and 7 of the claim (Mask R-CNN++ vs Mask R-CNN,
# UNet++ vs U-Net vs wide U-Net) at full width with AMP (configs/studies/*_gpu.yaml), written
# into the gpu-study section of docs/results.md. `make gpu-study ARGS=--dry-run` runs the
# same code path on the CPU in a minute or two (its section says it is a dry run).
MASKRCNN_PP_DATA ?= $(abspath ../shared/data)
gpu-study:
	@echo "$(ARGS)" | grep -q -- --dry-run || nvidia-smi -L >/dev/null 2>&1 || { echo "gpu-study: no NVIDIA GPU here (nvidia-smi -L failed); run it on a machine with one, or with ARGS=--dry-run" >&2; exit 2; }
	@$(MAKE) --no-print-directory setup
	MASKRCNN_PP_DATA=$(MASKRCNN_PP_DATA) timeout 540 $(PY) tools/gpu_study.py $(if $(findstring --dry-run,$(ARGS)),,--doc docs/results.md) $(ARGS)

clean:
	rm -rf $(VENV) output build *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
