# lit_compclip: `make help` lists the targets. Everything installs itself on first use.
SHELL := /bin/bash
PYTHON ?= python3
EXP ?= experiments/default.yaml
ARGS ?=

# Use the active virtualenv if there is one, else .venv/ inside the repo.
ifdef VIRTUAL_ENV
  VENV := $(VIRTUAL_ENV)
else
  VENV := .venv
endif
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lit_compclip-installed

.DEFAULT_GOAL := help
CKPT ?= runs/default/checkpoints/last.ckpt
# A variable given on make's command line to a target that does not read it would be ignored without a word (make
# finetune EXP=... would train experiments/hard_negatives.yaml anyway): refused with one line and exit 2 instead.
unused = $(foreach v,$(1),$(if $(filter command line,$(origin $(v))),$(error make $@: $(v) is not used by this target$(2))))
.PHONY: help install train finetune probe ablation seeds refinements synth bench bench-gpu bench-decoder bench-gpu-decoder \
        bench-recaption bench-data test test-all config clean

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-15s %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)  ## install the package and its dependencies (into .venv/ unless a virtualenv is active)

train: $(STAMP)  ## train EXP (default experiments/default.yaml) with overrides ARGS="key=value ..."; builds the data first
	$(call unused,CKPT)
	$(PY) -m lit_compclip.cli train $(EXP) $(ARGS)

finetune: $(STAMP)  ## stage 2: hard-negative fine-tuning from runs/default (after make train); ARGS as for train
	$(call unused,EXP CKPT SWEEP,; it trains experiments/hard_negatives.yaml: give overrides in ARGS="key=value ...")
	$(PY) -m lit_compclip.cli train experiments/hard_negatives.yaml $(ARGS)

probe: $(STAMP)  ## score checkpoint CKPT (default runs/default/checkpoints/last.ckpt) with its run's probes (EXP=...: that file's); ARGS="--dump DIR ..."
	$(PY) -m lit_compclip.cli probe --ckpt "$(CKPT)" $(if $(filter command line environment,$(origin EXP)),$(EXP)) $(ARGS)

ifdef QUICK
  SWEEP ?= experiments/sweeps/ablation_quick.yaml
else
  SWEEP ?= experiments/sweeps/ablation.yaml
endif
ablation: $(STAMP)  ## the paper's 2x2 ablation x 3 seeds, each run as long as make train (QUICK=1: ~3 min) -> runs/ablation*/REPORT.md
	$(call unused,EXP CKPT,; it runs the sweep spec SWEEP)
	$(PY) -m lit_compclip.cli sweep $(SWEEP) $(ARGS)

seeds: $(STAMP)  ## the default experiment over seeds 0-4, two runs at a time -> runs/seeds/REPORT.md (which seeds pass 80%)
	$(call unused,EXP CKPT SWEEP,; it runs experiments/sweeps/seeds.yaml)
	$(PY) -m lit_compclip.cli sweep experiments/sweeps/seeds.yaml $(ARGS)

refinements: $(STAMP)  ## the paper's refinements x 3 seeds: whole captions vs sentence sampling, then hard negatives vs a plain extra epoch -> runs/refinements/, runs/finetune/
	$(call unused,EXP CKPT SWEEP,; it runs experiments/sweeps/refinements.yaml and finetune.yaml)
	$(PY) -m lit_compclip.cli sweep experiments/sweeps/refinements.yaml $(ARGS)
	$(PY) -m lit_compclip.cli sweep experiments/sweeps/finetune.yaml $(ARGS)

synth: $(STAMP)  ## build EXP's synthetic world (training shards + probe sets; data/synth by default); ARGS="synth.key=value ... --overwrite"
	$(call unused,CKPT)
	$(PY) -m lit_compclip.cli synth $(EXP) $(ARGS)

config: $(STAMP)  ## print the resolved config of EXP with ARGS, checked
	$(call unused,CKPT)
	$(PY) -m lit_compclip.cli config $(EXP) $(ARGS)

# open_clip is the benchmarks' baseline only: installed on first use of bench / bench-gpu.
BENCH_STAMP := $(VENV)/.lit_compclip-bench-installed
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -e '.[bench]'
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)  ## CPU, A B B A rounds: ours vs open_clip (like for like; its padding and dropout factors), text cache, length groups, step cost split, FLOP/s, data vs model, probe overhead -> bench.json (ARGS="--quick")
	$(PY) -m benchmarks.bench $(ARGS)

bench-gpu: $(BENCH_STAMP)  ## on one GPU, bf16: samples/s and FLOP utilisation of ViT-B/16 + MiniLM / + a 12x768 BERT, beside open_clip; each speed lever on its own row (ARGS="--only levers")
	$(PY) -m benchmarks.bench_gpu $(ARGS)

bench-decoder: $(BENCH_STAMP)  ## CPU, A B B A rounds: a 26-layer random decoder text tower: text cache vs its bound, samples/s vs MiniLM, open_clip's HF tower -> bench_decoder.json (ARGS="--quick")
	$(PY) -m benchmarks.bench_decoder $(ARGS)

bench-gpu-decoder: $(STAMP)  ## on one GPU, bf16: ViT-B/16 + Qwen3-Embedding-0.6B- and Gemma-2-2B-sized random decoders: samples/s, peak memory, MFU, cache on/off
	$(PY) -m benchmarks.bench_gpu_decoder $(ARGS)

bench-data: $(STAMP)  ## CPU: the training loader on real-size JPEG shards at 224 px, 0..N workers: samples/s per worker, workers one GPU needs (--gpu-rate), decode vs transform, Pillow draft decoding -> bench_data.json (ARGS="--quick")
	$(PY) -m benchmarks.bench_data $(ARGS)

bench-recaption: $(STAMP)  ## recaption backends' samples/s, as ratios against a baseline run in the same process
	$(PY) -m benchmarks.bench_recaption

test: $(STAMP)  ## run the test suite (the slow tests excluded); ARGS="-k NAME ..." for pytest
	$(PY) -m pytest -q $(ARGS)

test-all: $(STAMP)  ## run every test, the slow ones included
	$(PY) -m pytest -q -m "slow or not slow" $(ARGS)

clean:  ## remove generated data, the text cache and runs (keeps .venv/)
	rm -rf data/synth data/cache runs
