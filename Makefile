# monarchpc: every target installs what it needs first (into .venv).
#   make demo    train a Monarch-2 HMM on the embedded corpus (no download)
#   make test    run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
TORCH_VERSION ?= 2.13.0
# Extra Hydra overrides for any training target: make text8-hmm ARGS="optim.epochs=1"
ARGS ?=
# Data parallel on one node: GPUS=N runs N ranks (one per GPU) through torchrun, e.g.
#   make text8-monarch2 GPUS=4
# optim.batch_size is the global micro-batch, split across ranks, so results do not depend
# on GPUS; to keep 128 rows per GPU on 4 GPUs: ARGS="optim.batch_size=512 optim.accumulate=8".
# NVLink multicast stays off (NCCL_NVLS_ENABLE=0).
GPUS ?= 1
ifeq ($(strip $(GPUS)),1)
TRAIN := $(PY) -m monarchpc.train
else
TRAIN := NCCL_NVLS_ENABLE=0 $(PY) -m torch.distributed.run --standalone --nproc_per_node=$(GPUS) -m monarchpc.train
endif

TEXT_TARGETS := demo text8-hmm text8-monarch2 chars-text8-prefix text8-ablation-init \
	text8-sweep-b2 text8-sweep-b2-hmm text8-sweep-b2-monarch2 text8-sweep-b2-monarch3 \
	text8-sweep-b2-monarch4 \
	lm1b-hmm lm1b-monarch2 lm1b-sweep wikitext2-hmm wikitext2-monarch2
IMAGE_TARGETS := image-demo tiny-imagenet32-monarch-hclt imagenet32-monarch-hclt \
	imagenet64-monarch-hclt fig7-sweep
.PHONY: install test lint bench bench-ddp tables plots sampling-time pruning clean-venv \
	$(TEXT_TARGETS) $(IMAGE_TARGETS)

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

# One torch thread per process: the suite runs many tiny models, where threads only contend.
test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest tests

lint: install
	$(BIN)/ruff check .

# ---- text: the embedded demo, text8, the real text8 prefix, LM1B, WikiText-2 -------------
demo: install
	$(TRAIN) experiment=demo $(ARGS)

text8-hmm: install
	$(TRAIN) experiment=text8_hmm $(ARGS)

text8-monarch2: install
	$(TRAIN) experiment=text8_monarch2 $(ARGS)

chars-text8-prefix: install
	$(TRAIN) experiment=chars_text8_prefix $(ARGS)

# text8-monarch2 is the paper's recipe: dense HMMs of 512 and 1024 (cached in
# outputs/factors/) multiplied into a Monarch-2 HMM of h = 2^19, 20 epochs, batch 128 x 32.
# Table 2: random vs multiplication initialization at four hidden sizes (a Hydra multirun;
# factor HMMs are shared between jobs through outputs/factors/).
text8-ablation-init: install
	$(TRAIN) -m experiment=text8_ablation_init $(ARGS)

# Table B.2 / Figures 4-5: BPC against FLOPs per token, one multirun per column.
text8-sweep-b2-hmm text8-sweep-b2-monarch2 text8-sweep-b2-monarch3 text8-sweep-b2-monarch4: text8-sweep-b2-%: install
	$(TRAIN) -m experiment=sweep_b2_$* $(ARGS)

text8-sweep-b2: text8-sweep-b2-hmm text8-sweep-b2-monarch2 text8-sweep-b2-monarch3 text8-sweep-b2-monarch4

# LM1B needs the official release unpacked under data/lm1b (the loader's error says how).
lm1b-hmm: install
	$(TRAIN) experiment=lm1b_hmm $(ARGS)

lm1b-monarch2: install
	$(TRAIN) experiment=lm1b_monarch2 $(ARGS)

lm1b-sweep: install
	$(TRAIN) -m experiment=sweep_lm1b $(ARGS)

# The LM1B pipeline on real text shipped in ../shared/data (WikiText-2 validation text).
wikitext2-hmm: install
	$(TRAIN) experiment=wikitext2_hmm $(ARGS)

wikitext2-monarch2: install
	$(TRAIN) experiment=wikitext2_monarch2 $(ARGS)

# ---- images: HCLT and Monarch-HCLT on image patches -------------------------------------
image-demo: install
	$(TRAIN) experiment=image_demo $(ARGS)

tiny-imagenet32-monarch-hclt: install
	$(TRAIN) experiment=tiny_imagenet32_monarch_hclt $(ARGS)

imagenet32-monarch-hclt: install
	$(TRAIN) experiment=imagenet32_monarch_hclt $(ARGS)

imagenet64-monarch-hclt: install
	$(TRAIN) experiment=imagenet64_monarch_hclt $(ARGS)

fig7-sweep: install
	$(TRAIN) -m experiment=sweep_fig7 $(ARGS)

# ---- speed ------------------------------------------------------------------------------
# E-step / EM-update throughput (GPU: the issue's cases; CPU: BENCH_ARGS=--tiny). JSON + Markdown.
BENCH_ARGS ?= --precision bf16 --reps 5 --ceilings --lean
bench: install
	$(PY) scripts/bench.py $(BENCH_ARGS)

# Tokens/s with 1 and 2 GPUs and the ranks' parameter divergence after 10 updates.
BENCH_GPUS ?= 1 2
bench-ddp: install
	NCCL_NVLS_ENABLE=0 $(PY) scripts/bench_ddp.py --gpus $(BENCH_GPUS) --out outputs/bench_ddp.json $(if $(ARGS),-- $(ARGS))

# ---- tables and plots from run directories ------------------------------------------------
# RUNS may name several folders: make tables RUNS="outputs /other/runs"
RUNS ?= outputs
OUT ?= docs/results
WANDB_PROJECT ?=
TABLE_ARGS ?=
PLOT_ARGS ?=
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

clean-venv:
	rm -rf $(VENV)
