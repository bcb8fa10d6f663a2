# Every target sets itself up on first use: a fresh clone needs only python3 (3.11+).
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint check bench serve clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  ## the gateway + a built-in fake provider on 127.0.0.1:8080
	$(BIN)/sluice demo

serve: $(STAMP)  ## the gateway on ./sluice.toml (or embedded defaults)
	$(BIN)/sluice serve

test: $(STAMP)  ## the whole test suite (unit + integration on loopback)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

check: lint test  ## what .ci/run runs

bench: $(STAMP)  ## the benchmark (needs wrk and taskset; a script, not a test)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
