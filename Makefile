# monarchpc: every target installs what it needs first (into .venv).
#   make demo    train a Monarch-2 HMM on the embedded corpus (no download)
#   make test    run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
TORCH_VERSION ?= 2.13.0
# Extra Hydra overrides for any training target, e.g. make text8-hmm ARGS="trainer.max_epochs=1"
ARGS ?=

.PHONY: install demo test lint text8-hmm text8-monarch2 chars-text8-prefix clean-venv

install: $(VENV)/.installed

# The venv sees the system's site-packages, so a CUDA torch you already have is kept;
# only where no torch imports is the pinned CPU build installed.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if $(PY) -c "import torch" 2>/dev/null; then \
	  echo "keeping torch $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	else \
	  echo "installing torch==$(TORCH_VERSION)"; $(PY) -m pip install -q torch==$(TORCH_VERSION); \
	fi
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: install
	$(PY) -m monarchpc.train experiment=demo $(ARGS)

test: install
	$(PY) -m pytest tests

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

text8-hmm: install
	$(PY) -m monarchpc.train experiment=text8_hmm $(ARGS)

text8-monarch2: install
	$(PY) -m monarchpc.train experiment=text8_monarch2 $(ARGS)

# The real text8 prefix in ../shared/data (no download needed on this workplace's machines).
chars-text8-prefix: install
	$(PY) -m monarchpc.train experiment=chars_text8_prefix $(ARGS)

clean-venv:
	rm -rf $(VENV)
