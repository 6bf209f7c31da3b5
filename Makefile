# ndt: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY ?= $(VENV)/bin/python
SWEEP ?= results/paper

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -c constraints.txt -e ".[dev]"
	touch $@

install: $(VENV)/.installed ## create .venv and install ndt (torch/torchvision pinned by constraints.txt)

run: install ## train the default experiment on the embedded digits data and print where results are
	$(PY) -m ndt.demo

test: install ## run every test (fast tier and slow end-to-end tests)
	$(PY) -m pytest -q

test-fast: install ## run the fast tier only
	$(PY) -m pytest -q -m "not slow"

lint: install ## ruff (lint + format check) and mypy
	$(PY) -m ruff check ndt tests scripts
	$(PY) -m ruff format --check ndt tests scripts
	$(PY) -m mypy

format: install ## format the code with ruff
	$(PY) -m ruff format ndt tests scripts
	$(PY) -m ruff check --fix ndt tests scripts

bench: install ## print the benchmark ratios (metric kernel, tracking overhead)
	$(PY) -m ndt.bench

tables: install ## regenerate the appendix tables of SWEEP (default results/paper)
	@echo "not yet: aggregation lands with the tables issue"

clean: ## remove caches and build files (keeps results/ and .venv)
	rm -rf .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

.PHONY: help install run test test-fast lint format bench tables clean
