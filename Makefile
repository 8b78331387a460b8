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

.PHONY: install demo test lint text8-hmm text8-monarch2 chars-text8-prefix clean-venv bench \
	lm1b-hmm lm1b-monarch2 lm1b-sweep wikitext2-hmm wikitext2-monarch2 tables plots sampling-time pruning

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
# LM1B needs the official release unpacked under data/lm1b (the loader's error says how).
lm1b-hmm: install
	$(PY) -m monarchpc.train experiment=lm1b_hmm $(ARGS)

lm1b-monarch2: install
	$(PY) -m monarchpc.train experiment=lm1b_monarch2 $(ARGS)

# Dense vs Monarch-2 at three hidden sizes on 2M training sentences (Hydra multirun).
lm1b-sweep: install
	$(PY) -m monarchpc.train experiment=sweep_lm1b $(ARGS)

# The LM1B pipeline on real text shipped in ../shared/data (WikiText-2 validation text).
wikitext2-hmm: install
	$(PY) -m monarchpc.train experiment=wikitext2_hmm $(ARGS)

wikitext2-monarch2: install
	$(PY) -m monarchpc.train experiment=wikitext2_monarch2 $(ARGS)
RUNS ?= outputs
OUT ?= docs/results
# optional: read runs logged to wandb too, e.g. WANDB_PROJECT=me/monarchpc
WANDB_PROJECT ?=
# extra flags, e.g. TABLE_ARGS="--text8-dataset chars --table2-sizes 4096,8192,16384,32768"
TABLE_ARGS ?=
PLOT_ARGS ?=
# the run directory (or directories) for sampling-time and pruning
RUN ?=
WANDB_FLAG = $(if $(WANDB_PROJECT),--wandb-project $(WANDB_PROJECT))


tables: install
	$(PY) scripts/make_tables.py --runs $(RUNS) --out $(OUT) $(WANDB_FLAG) $(TABLE_ARGS)

plots: install
	$(PY) scripts/make_plots.py --runs $(RUNS) --out $(OUT) $(WANDB_FLAG) $(PLOT_ARGS)

# Table 1/4 "Time": writes sampling_seconds_per_sequence into $(RUN)/run.json
sampling-time: install
	$(PY) scripts/measure_sampling.py --run $(RUN)

# Figure 6: writes $(RUN)/pruning.json
pruning: install
	$(PY) scripts/eval_pruning.py --run $(RUN) --fractions 0,0.5,0.75,0.9,0.95,0.99

# E-step / EM-update throughput (GPU: the issue's cases; CPU: a tiny smoke test). JSON + Markdown.
BENCH_ARGS ?=
bench: install
	$(PY) scripts/bench.py $(BENCH_ARGS)
