PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MLS_TEST_VECTORS_DIR ?= ../shared/mls-test-vectors
export MLS_TEST_VECTORS_DIR

.PHONY: install test lint typecheck pytest test-vectors demo bench-mls bench-qs bench-as bench-ds bench-federation clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP) lint typecheck test-vectors pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q

test-vectors: $(STAMP)
	$(BIN)/python -m phx.mls.vectors "$(MLS_TEST_VECTORS_DIR)"

demo: $(STAMP)
	$(BIN)/phx demo

bench-mls: $(STAMP)
	$(BIN)/python benchmarks/bench_mls.py

bench-qs: $(STAMP)
	$(BIN)/python benchmarks/bench_qs.py --concurrency 64

bench-as: $(STAMP)
	$(BIN)/python benchmarks/bench_as.py

bench-ds: $(STAMP)
	$(BIN)/python benchmarks/bench_ds.py

bench-federation: $(STAMP)
	$(BIN)/python benchmarks/bench_federation.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .mypy_cache .pytest_cache .ruff_cache
