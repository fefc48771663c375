# Two commands on a fresh machine: `make demo` and `make test`. Both need only python3.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv demo test lint types pytest bench bench-peers chaos clean

$(STAMP): pyproject.toml requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[prometheus]' -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/stalwart demo

test: lint types pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/ruff format --check src tests examples benchmarks

types: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest --cov --cov-report=term-missing --cov-fail-under=95

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/map_steps.py
	$(BIN)/python benchmarks/s3.py

bench-peers: $(STAMP)
	$(BIN)/python benchmarks/peers.py

chaos: $(STAMP)
	STALWART_CHAOS_KILLS=1000 $(BIN)/python -m pytest -p no:cacheprovider -q -s --timeout=0 \
		tests/reliability/test_kill_anywhere.py tests/test_deadletter_crash.py \
		"tests/test_interrupt.py" -k "kill or sigkill"

clean:
	rm -rf $(VENV) .coverage .coverage.* .pytest_cache .mypy_cache .ruff_cache stalwart-data demo-data
