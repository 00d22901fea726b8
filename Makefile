# Set-up and the two main jobs. `make quickstart` runs the quickstart study,
# `make test` runs the test suite; both create the virtual environment first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?= $(if $(MATXFER_DATA_DIR),$(MATXFER_DATA_DIR),$(abspath ../shared/data))
export MATXFER_DATA_DIR := $(DATA_DIR)
export OMP_NUM_THREADS ?= 2

.PHONY: setup quickstart test test-slow lint typecheck clean

$(BIN)/matxfer: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU wheel first, so that the package's torch range is already satisfied
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,chgnet,sevennet,zeroshot,store]"
	touch $(BIN)/matxfer

setup: $(BIN)/matxfer

# The quickstart study: pretrain a small equivariant network on Materials Project elastic
# tensors, transfer it to dielectric and piezoelectric tensors (scratch / head / full), write
# runs/quickstart/report.md. A rerun resumes.
QUICKSTART_OUT ?= runs/quickstart
quickstart: setup
	$(BIN)/matxfer study configs/quickstart.yaml --out $(QUICKSTART_OUT)

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check src tests benchmarks

# mypy on the core modules listed in pyproject.toml ([tool.mypy] files)
typecheck: setup
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
