# tispipe: the pipeline as file targets, so make skips a stage that is up to date.
# `make demo` runs everything on the shipped toy data; `make test` sets up and runs the tests.

PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
RUNS ?= runs
DATA ?= data/toy
PY := $(VENV)/bin/python
TISPIPE := HF_HUB_OFFLINE=1 $(VENV)/bin/tispipe
export HF_HUB_OFFLINE := 1

.PHONY: setup base demo test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

$(DATA)/train.jsonl:
	$(TISPIPE) toy-data --out $(DATA)

base: $(RUNS)/base/model.safetensors

$(RUNS)/base/model.safetensors: $(VENV)/.installed $(DATA)/train.jsonl
	$(TISPIPE) init-base --data $(DATA)/train.jsonl --out $(RUNS)/base --overwrite

demo: base
	@echo "The estimate, train and eval stages are not built yet; 'make demo' currently stops after the base model."

test: $(VENV)/.installed
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(PY) -m ruff check tispipe tests

clean:
	rm -rf $(RUNS)
