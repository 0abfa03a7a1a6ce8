# Everything runs from .venv, so `make dev` / `make test` behave the same on every machine and in CI.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv dev test lint bench chaos clean

venv: $(STAMP)

# Reinstall only when the dependency list changed: pip resolving on every `make test` costs seconds.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

dev: venv
	$(BIN)/sopflow dev

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# Fault injection at full size: 200 compressed lifecycles, 5 worker SIGKILLs, 1 dev server restart, a flaky SMTP
# relay; prints its counts and fails on any lost, duplicated or stuck email, record or workflow.
chaos: venv
	$(BIN)/python -m tests.chaos.harness --clients 200 --kills 5 --restarts 1

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

# Benchmarks (issue 7): full sizes, about an hour on 2 cores; figures and notes in bench/RESULTS.md. Each one also
# runs alone with smaller sizes, e.g. `.venv/bin/python -m bench.throughput --clients 50`.
bench: venv
	$(BIN)/python -m bench.throughput
	$(BIN)/python -m bench.latency
	$(BIN)/python -m bench.latency --concurrency 1
	$(BIN)/python -m bench.scale
	$(BIN)/python -m bench.long_life
	$(BIN)/python -m bench.sqlite_pragmas

# Local dev state only (Temporal db, records db, captured mail); the venv stays.
clean:
	rm -rf .sopflow
