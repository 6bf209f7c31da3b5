# ndt: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY ?= $(VENV)/bin/python
SWEEP ?= results/paper
PORT ?= 8050

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -c constraints.txt -e ".[dev,view]"
	touch $@

install: $(VENV)/.installed ## create .venv and install ndt (torch/torchvision pinned by constraints.txt)

$(VENV)/.integrations: $(VENV)/.installed
	$(PY) -m pip install -c constraints.txt -e ".[dev,view,integrations]"
	touch $@

install-integrations: $(VENV)/.integrations ## also install the optional frameworks: Lightning, transformers, TensorBoard, W&B, MLflow (CI does)

run: install ## train the default experiment (mlp_narrow on the embedded digits data) and print where results are
	$(PY) -m ndt.run

smoke: install ## a quick end-to-end sweep: 3 architectures on digits, 40 steps each
	$(PY) -m ndt.run +sweep=smoke

sweep: install ## the study's grid locally (57 runs + 3 skipped pairs; needs the datasets under data/)
	$(PY) -m ndt.run +sweep=paper

test: install ## run every test (fast tier and slow end-to-end tests)
	$(PY) -m pytest -q

test-fast: install ## run the fast tier only
	$(PY) -m pytest -q -m "not slow"

lint: install ## ruff (lint + format check) and mypy
	$(PY) -m ruff check ndt tests
	$(PY) -m ruff format --check ndt tests
	$(PY) -m mypy
	@if command -v shellcheck >/dev/null; then shellcheck scripts/*.sh .ci/run; else echo "shellcheck not installed: shell scripts not linted"; fi

format: install ## format the code with ruff
	$(PY) -m ruff format ndt tests
	$(PY) -m ruff check --fix ndt tests

bench: install ## print the benchmarks measured in one run (kernel, overhead, runs, aggregation, view in Chromium)
	$(PY) -m ndt.bench

bench-gpu: ## the GPU figures in < 5 min on a CUDA machine: tracking overhead (incl. GPT-2 small), study run time, projected paper sweep with runs at once (refuses without CUDA)
	VENV=$(VENV) scripts/bench_gpu.sh

gpu-wheels: install-integrations ## here, before a GPU check on an offline CUDA machine: the wheels it lacks (Hydra, OmegaConf, submitit, Captum) into .whl
	VENV=$(VENV) scripts/gpu_wheels.sh

gpu-check: ## on a CUDA machine, in ~8 min: the CUDA tests, then bench-gpu (offline from .whl when there is no venv); logs in results/gpu_check
	VENV=$(VENV) scripts/gpu_check.sh

tables: install ## regenerate the appendix tables of SWEEP (default results/paper) into SWEEP/tables
	$(PY) -m ndt.tables $(SWEEP)

status: install ## counts of done / running / failed / missing runs of SWEEP (default results/paper), failed ones with their error
	$(PY) -m ndt.status $(SWEEP)

view: install ## a live web page over SWEEP (default results/paper; results/ for every sweep) on localhost, port PORT (8050)
	$(PY) -m ndt.view $(SWEEP) --port $(PORT)

investigate: install ## report on the largest jump of RUN (a run directory)
	$(PY) -m ndt.investigate $(RUN)

import-legacy: install ## convert the study's JSON results in LEGACY_DIR into the sweep SWEEP
	$(PY) -m ndt.importers.legacy $(LEGACY_DIR) $(SWEEP)

validate-detector: install ## synthetic battery of the jump detectors (fails if robust misses its targets)
	$(PY) -m ndt.validate.battery

validate: install ## benchmark every detector on training runs with known transitions (cases A,B,C; cached under results/validate/cache)
	$(PY) -m ndt.validate --cases A,B,C

validate-slow: install ## the benchmark with the slow grokking case D as well
	$(PY) -m ndt.validate --cases A,B,C,D

validate-causal: install ## the investigate report at sparse parity's (case B) transition, 5 seeds, and its causal check (fails if a seed misses it)
	$(PY) -m ndt.validate --investigate B

clean: ## remove caches and build files (keeps results/ and .venv)
	rm -rf .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

.PHONY: help install install-integrations run smoke sweep test test-fast lint format bench bench-gpu gpu-wheels gpu-check tables status view investigate import-legacy validate-detector validate validate-slow validate-causal clean
