# monarchpc: every target installs what it needs first (into .venv). `make` lists the targets.
#   make demo    train a Monarch-2 HMM on the embedded corpus (no download)
#   make test    run the test suite
# A target's `## text` is its line in `make help`; [GPU] marks GPU-sized runs.
SHELL := /bin/bash
.DEFAULT_GOAL := help
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

TEXT_TARGETS := demo text8-hmm text8-monarch2 text8-prefix chars-text8-prefix text8-ablation-init \
	text8-sweep-b2 text8-sweep-b2-hmm text8-sweep-b2-monarch2 text8-sweep-b2-monarch3 \
	text8-sweep-b2-monarch4 \
	lm1b-hmm lm1b-monarch2 lm1b-sweep wikitext2-hmm wikitext2-monarch2
IMAGE_TARGETS := image-demo tiny-imagenet32-monarch-hclt imagenet32-monarch-hclt \
	imagenet64-monarch-hclt fig7-sweep
.PHONY: help install lock test test-fast test-gpu lint examples bench bench-hclt bench-ddp bench-recipe \
	bench-reference profile tables plots results sampling-time pruning compression-bench \
	clean-venv $(TEXT_TARGETS) $(IMAGE_TARGETS)

help: ## this list (the default goal)
	@echo "usage: make TARGET [ARGS=\"hydra overrides\"] [GPUS=n]; [GPU]: sized for a GPU"
	@grep -hE '^[a-z0-9 %-]+:.*## ' $(MAKEFILE_LIST) | \
	  sed -E 's/^([^:]+):.*## (.*)$$/\1\t\2/' | \
	  awk -F '\t' '{printf "  %-28s %s\n", $$1, $$2}'

install: $(VENV)/.installed ## create .venv and install the project at the versions of constraints.txt

# A venv of its own (no system site-packages): every package at the version constraints.txt
# pins (PIP_CONSTRAINT also reaches pip's build environments), torch at TORCH_VERSION: on a
# CPU machine with the CPU wheel at hand (as here) pip takes 2.13.0+cpu, from PyPI it gets
# the CUDA build of 2.13.0. sentencepiece is 0.2.2: the committed WikiText-2 runs' tokenizer
# is reproducible with it only. `make lock` writes constraints.txt anew.
CONSTRAINTS := $(abspath constraints.txt)
$(VENV)/.installed: pyproject.toml constraints.txt
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	PIP_CONSTRAINT=$(CONSTRAINTS) $(PY) -m pip install -q --upgrade pip setuptools
	PIP_CONSTRAINT=$(CONSTRAINTS) $(PY) -m pip install -q torch==$(TORCH_VERSION) -e ".[dev]"
	touch $@

# Resolve the newest versions pyproject's ranges allow in a fresh venv and pin them all
# (torch and its CUDA packages stay with TORCH_VERSION; the project itself is editable).
lock: ## write constraints.txt from a fresh resolve of pyproject.toml's dependencies
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip setuptools
	.venv-lock/bin/python -m pip install -q torch==$(TORCH_VERSION) -e ".[dev]" sentencepiece==0.2.2
	{ echo "# pip constraints of make install and CI: every package at one version (make lock"; \
	  echo "# writes this file; torch is pinned by the Makefile's TORCH_VERSION)."; \
	  .venv-lock/bin/python -m pip freeze --all --exclude-editable | \
	    grep -v -i -E '^(torch|nvidia-[a-z0-9-]+)=='; } > constraints.txt
	rm -rf .venv-lock

# One torch thread per process: the suite runs many tiny models, where threads only contend.
# PYTEST_ARGS: more pytest options, e.g. PYTEST_ARGS="-m kernel" or "-x".
PYTEST_ARGS ?=
test: install ## the test suite on the CPU (a few minutes)
	OMP_NUM_THREADS=1 $(PY) -m pytest $(PYTEST_ARGS) tests

test-fast: install ## the suite without the tests marked slow (about half the time)
	OMP_NUM_THREADS=1 $(PY) -m pytest -m "not slow" tests

# The GPU tier (tests/gpu, marker gpu): CUDA-graph replay, TF32 operand rounding on the tensor
# cores, the fp32 fallback at 32^3, bf16 within bands; Triton compiled, not interpreted. Writes
# its record to GPU_TEST_RECORD/test_gpu_<gpu>.json (docs/results/device to publish it).
GPU_TEST_RECORD ?= outputs/bench
test-gpu: install ## [GPU] the GPU test tier; GPU_TEST_RECORD=docs/results/device records it
	TRITON_INTERPRET=0 $(PY) -m pytest -m gpu tests/gpu --gpu-record $(GPU_TEST_RECORD)

lint: install ## ruff
	$(BIN)/ruff check .

# The scripts of examples/ (docs/extending.md); EXAMPLE_ARGS=--tiny: seconds each.
EXAMPLE_ARGS ?=
examples: install ## run the scripts of examples/ (CPU, about a minute each)
	@set -e; for f in examples/*.py; do echo "== $$f"; $(PY) $$f $(EXAMPLE_ARGS); done

# ---- text: the embedded demo, text8, the text8 prefix, LM1B, WikiText-2 -------------------
demo: install ## Monarch-2 HMM on the embedded corpus, about a minute on a CPU
	$(TRAIN) experiment=demo $(ARGS)

text8-hmm: install ## [GPU] dense HMM h=2^15 on text8 (Table 1)
	$(TRAIN) experiment=text8_hmm $(ARGS)

text8-monarch2: install ## [GPU] Monarch-2 HMM h=2^19 on text8, init by multiplication (Table 1)
	$(TRAIN) experiment=text8_monarch2 $(ARGS)

# The first 12.5M characters of text8.zip (downloaded into data/text8/ on first use), the data
# of docs/results/runs/text8_prefix; a local copy: ARGS="dataset.path=path/to/text8.zip".
text8-prefix: install ## Monarch-2 HMM on the first 12.5M chars of text8 (CPU, ~10 min)
	$(TRAIN) experiment=chars_text8_prefix $(ARGS)

chars-text8-prefix: text8-prefix  # the target's earlier name

# text8-monarch2 is the paper's recipe: dense HMMs of 512 and 1024 (cached in
# outputs/factors/) multiplied into a Monarch-2 HMM of h = 2^19, 20 epochs, batch 128 x 32.
# Table 2: random vs multiplication initialization at four hidden sizes (a Hydra multirun;
# factor HMMs are shared between jobs through outputs/factors/).
text8-ablation-init: install ## [GPU] sweep: random vs multiplication init (Table 2)
	$(TRAIN) -m experiment=text8_ablation_init $(ARGS)

# Table B.2 / Figures 4-5: BPC against FLOPs per token, one multirun per column.
text8-sweep-b2-hmm: install ## [GPU] Table B.2, dense HMM column
	$(TRAIN) -m experiment=sweep_b2_hmm $(ARGS)

text8-sweep-b2-monarch2: install ## [GPU] Table B.2, Monarch-2 column
	$(TRAIN) -m experiment=sweep_b2_monarch2 $(ARGS)

text8-sweep-b2-monarch3: install ## [GPU] Table B.2, Monarch-3 column
	$(TRAIN) -m experiment=sweep_b2_monarch3 $(ARGS)

text8-sweep-b2-monarch4: install ## [GPU] Table B.2, Monarch-4 column
	$(TRAIN) -m experiment=sweep_b2_monarch4 $(ARGS)

text8-sweep-b2: text8-sweep-b2-hmm text8-sweep-b2-monarch2 text8-sweep-b2-monarch3 text8-sweep-b2-monarch4 ## [GPU] Table B.2, all four columns

# LM1B needs the official release unpacked under data/lm1b (the loader's error says how).
lm1b-hmm: install ## [GPU] dense HMM on LM1B (Table 4; data under data/lm1b)
	$(TRAIN) experiment=lm1b_hmm $(ARGS)

lm1b-monarch2: install ## [GPU] Monarch-2 HMM h=2^16 on LM1B (Table 4)
	$(TRAIN) experiment=lm1b_monarch2 $(ARGS)

lm1b-sweep: install ## [GPU] sweep: dense vs Monarch-2 on LM1B
	$(TRAIN) -m experiment=sweep_lm1b $(ARGS)

# The LM1B pipeline on any local text of one sentence per line (e.g. WikiText-2's
# wiki.valid.raw): make wikitext2-hmm ARGS="dataset.path=path/to/wiki.valid.raw".
wikitext2-hmm: install ## dense HMM on a text of lines, ARGS="dataset.path=wiki.valid.raw"
	$(TRAIN) experiment=wikitext2_hmm $(ARGS)

wikitext2-monarch2: install ## Monarch-2 HMM on a text of lines (as wikitext2-hmm)
	$(TRAIN) experiment=wikitext2_monarch2 $(ARGS)

# ---- images: HCLT and Monarch-HCLT on image patches -------------------------------------
image-demo: install ## Monarch-HCLT on patches of a photograph, about a minute on a CPU
	$(TRAIN) experiment=image_demo $(ARGS)

tiny-imagenet32-monarch-hclt: install ## [GPU] Monarch-HCLT on a folder/tar of images (dataset.train=...)
	$(TRAIN) experiment=tiny_imagenet32_monarch_hclt $(ARGS)

imagenet32-monarch-hclt: install ## [GPU] Monarch-HCLT on ImageNet32 (Table 5; data under data/imagenet32)
	$(TRAIN) experiment=imagenet32_monarch_hclt $(ARGS)

imagenet64-monarch-hclt: install ## [GPU] Monarch-HCLT on ImageNet64 (Table 5)
	$(TRAIN) experiment=imagenet64_monarch_hclt $(ARGS)

fig7-sweep: install ## [GPU] sweep: HCLT vs Monarch-HCLT on ImageNet64 (Figure 7)
	$(TRAIN) -m experiment=sweep_fig7 $(ARGS)

# ---- speed ------------------------------------------------------------------------------
# Benchmarks are tools of one command, python -m monarchpc.bench TOOL (docs/performance.md).
# JSON lines go to outputs/bench/; add --record to BENCH_ARGS to write docs/results/device/.
# E-step / EM-update throughput (GPU: the documented cases; CPU: BENCH_ARGS=--tiny).
BENCH_ARGS ?= --precision bf16 --reps 5 --ceilings --lean
bench: install ## [GPU] HMM E-step throughput (CPU: BENCH_ARGS=--tiny)
	$(PY) -m monarchpc.bench hmm $(BENCH_ARGS)

# HCLT / Monarch-HCLT E-step, beside PyJuice when it is installed (CPU: HCLT_BENCH_ARGS=--tiny).
HCLT_BENCH_ARGS ?=
bench-hclt: install ## [GPU] HCLT E-step throughput beside PyJuice (if installed)
	$(PY) -m monarchpc.bench hclt $(HCLT_BENCH_ARGS)

# make text8-monarch2's steady state: its config (init=random, text8-shaped synthetic rows, no
# evaluation) in the real training loop, 2 warm-up + 10 timed updates; tokens/s, each update's
# seconds, peak memory. RECIPE_ARGS=--record replaces docs/results/device/text8_monarch2_speed_<gpu>.json;
# GPUS=2 runs it data parallel (torchrun); CPU: RECIPE_ARGS=--tiny.
RECIPE_ARGS ?=
ifeq ($(strip $(GPUS)),1)
RECIPE := $(PY) -m monarchpc.bench recipe
else
RECIPE := NCCL_NVLS_ENABLE=0 $(PY) -m torch.distributed.run --standalone --nproc_per_node=$(GPUS) -m monarchpc.bench recipe
endif
bench-recipe: install ## [GPU] steady-state speed of make text8-monarch2 (CPU: RECIPE_ARGS=--tiny)
	$(RECIPE) $(RECIPE_ARGS)

# The reference implementation's E-step beside ours in one run (TF32 against TF32 and bf16):
# REFERENCE=path to a copy of wangben88/MonarchCircuits (or its monarch_hmm/hmm.py).
REFERENCE ?=
REFERENCE_ARGS ?=
bench-reference: install ## [GPU] the reference's HMM E-step beside ours (REFERENCE=MonarchCircuits copy)
	$(PY) -m monarchpc.bench reference --reference "$(REFERENCE)" $(REFERENCE_ARGS)

# Tokens/s with 1 and 2 GPUs and the ranks' parameter divergence after 10 updates.
BENCH_GPUS ?= 1 2
bench-ddp: install ## [2 GPUs] data-parallel throughput, 1 vs 2 GPUs
	NCCL_NVLS_ENABLE=0 $(PY) -m monarchpc.bench ddp --gpus $(BENCH_GPUS) $(if $(ARGS),-- $(ARGS))

# Where one E-step's time goes (torch.profiler, CUDA graphs off): top kernels and their
# families, peak memory; one JSON line appended to a file in outputs/bench/.
#   make profile CASE="monarch4 2^16" PROFILE_ARGS="--hidden 4096"      (Monarch-4, 8 x 8 blocks)
#   make profile STRUCTURE=hclt CASE=dense-512-512 PROFILE_ARGS="--precision tf32"
# CASE: a case of the hmm bench (name or index) or of the hclt bench (block-h-batch);
# TRACE=file.json also writes a Chrome trace (chrome://tracing, ui.perfetto.dev).
STRUCTURE ?= hmm
CASE ?= $(if $(filter hclt,$(STRUCTURE)),dense-512-512,monarch3 2^18)
PROFILE_ARGS ?=
TRACE ?=
profile: install ## [GPU] profile one E-step: STRUCTURE=hmm|hclt CASE="monarch3 2^18"
	$(PY) -m monarchpc.bench profile --structure $(STRUCTURE) --case "$(CASE)" \
	  $(if $(TRACE),--trace $(TRACE)) $(PROFILE_ARGS)

# ---- tables and plots from run directories ------------------------------------------------
# RUNS may name several folders: make tables RUNS="outputs /other/runs". Each writes a
# provenance_*.md beside its outputs: which run fed which row, and why others did not.
RUNS ?= outputs
OUT ?= outputs/reports
WANDB_PROJECT ?=
TABLE_ARGS ?=
PLOT_ARGS ?=
RUN ?=
WANDB_FLAG = $(if $(WANDB_PROJECT),--wandb-project $(WANDB_PROJECT))

tables: install ## paper tables from RUNS (outputs) into OUT (outputs/reports) + provenance
	$(PY) scripts/make_tables.py --runs $(RUNS) --out $(OUT) $(WANDB_FLAG) $(TABLE_ARGS)

plots: install ## paper figures from RUNS into OUT (outputs/reports) + provenance
	$(PY) scripts/make_plots.py --runs $(RUNS) --out $(OUT) $(WANDB_FLAG) $(PLOT_ARGS)

# docs/results: the committed tables and figures, rebuilt from the committed run records.
# Every campaign folder under runs/, except that of the EM ablation's variants (not the paper's
# settings) only its default-setting runs (em-base-*) take part.
RESULTS := docs/results
RESULT_RUNS := $(filter-out %/em_ablation,$(patsubst %/,%,$(wildcard $(RESULTS)/runs/*/))) \
  $(wildcard $(RESULTS)/runs/em_ablation/em-base-*)
results: install ## rebuild docs/results (tables, figures) from docs/results/runs
	$(PY) scripts/make_tables.py --out $(RESULTS) --runs $(RESULT_RUNS) \
	  --text8-dataset chars --lm1b-dataset lines-wikitext-2_valid --table2-sizes 1024,4096,16384,65536 \
	  --imagenet32-dataset image_folder --imagenet64-dataset image_folder
	$(PY) scripts/make_plots.py --out $(RESULTS) --runs $(RESULT_RUNS) \
	  --text8-dataset chars --imagenet64-dataset image_folder --imagenet32-dataset image_folder
	$(PY) -m monarchpc.reports.compression --records $(RESULTS)/compression --out $(RESULTS)

# Lossless compression records (docs/results/compression): TEXT_RUN / IMAGE_RUN run directories
# beside gzip, bzip2, xz, zstd, PNG and WebP, every one a checked round trip; then make results.
TEXT_RUN ?=
IMAGE_RUN ?=
compression-bench: install ## compression records of TEXT_RUN=<dir> IMAGE_RUN=<dir> (CPU)
	$(PY) -m monarchpc.bench compression --record $(if $(TEXT_RUN),--text-run $(TEXT_RUN)) \
	  $(if $(IMAGE_RUN),--image-run $(IMAGE_RUN))

# Table 1/4 "Time": writes sampling_seconds_per_sequence into $(RUN)/run.json
sampling-time: install ## Tables 1/4 time: sampling seconds per sequence of RUN=<dir>
	$(PY) scripts/measure_sampling.py --run $(RUN)

# Figure 6: writes $(RUN)/pruning.json
pruning: install ## Figure 6: likelihood with hidden states pruned, RUN=<dir>
	$(PY) scripts/eval_pruning.py --run $(RUN) --fractions 0,0.5,0.75,0.9,0.95,0.99

clean-venv: ## remove .venv
	rm -rf $(VENV)
