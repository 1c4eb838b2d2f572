# Two entry points, both self-contained on a fresh machine (see README):
#   make run   - set up, generate the built-in sample if data/raw is empty, run the main job
#   make test  - set up with the dev and dashboard extras, lint, run the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,dashboard]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/cip run

test: $(STAMP)
	$(BIN)/ruff check cip_pipeline cip_pipeline_tests
	$(BIN)/ruff format --check --quiet cip_pipeline cip_pipeline_tests
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check cip_pipeline cip_pipeline_tests

clean:
	rm -rf $(VENV) build *.egg-info
