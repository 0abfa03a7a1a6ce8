# Everything runs from .venv, so `make dev` / `make test` behave the same on every machine and in CI.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv lock dev test lint bench chaos chaos-pg clean screenshots

# Every package the venv gets, transitive ones included, pinned with hashes (`make lock` writes both from
# pyproject.toml). requirements.lock: the runtime and the build backend (what an image needs);
# requirements-dev.lock: the same pins plus the dev extras (what `make venv` installs).
LOCK := requirements.lock
DEV_LOCK := requirements-dev.lock

venv: $(STAMP)

# Reinstall only when the lock or the project changed: pip resolving on every `make test` costs seconds. Hash
# checking makes pip refuse anything not in the lock (a file that changed on the index, a dependency the lock lacks);
# the project itself goes in without dependencies and without build isolation, so even its build backend is the
# locked one. A pin edited in pyproject.toml without `make lock` stops here instead of installing the old version.
$(STAMP): $(DEV_LOCK) pyproject.toml
	$(PYTHON) -c '$(LOCK_MATCHES_PYPROJECT)' $(DEV_LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --require-hashes -r $(DEV_LOCK)
	$(BIN)/pip install --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $(STAMP)

# Upgrade: edit the pins in pyproject.toml (or none, to move only the transitive dependencies to their newest
# compatible releases), `make lock`, commit both locks; the next `make` of everyone reinstalls. uv resolves for every
# platform (`--universal`) against PyPI and records the hashes of every file of each release. It is a tool of this
# target only, kept in its own venv inside .venv so that the project's venv holds exactly the lock.
UV_VERSION := 0.13.9
UV := $(VENV)/lock-tools/bin/uv
LOCK_FLAGS := --generate-hashes --universal --python-version 3.11 --upgrade --quiet --custom-compile-command 'make lock'
BUILD_REQUIRES := $(PYTHON) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")'

lock:
	test -x $(UV) || { $(PYTHON) -m venv $(VENV)/lock-tools && $(VENV)/lock-tools/bin/pip install 'uv==$(UV_VERSION)'; }
	$(BUILD_REQUIRES) | $(UV) pip compile pyproject.toml - $(LOCK_FLAGS) -o $(LOCK)
	$(BUILD_REQUIRES) | $(UV) pip compile pyproject.toml - --extra dev --constraints $(LOCK) $(LOCK_FLAGS) -o $(DEV_LOCK)

# Every exact pin of pyproject.toml (dependencies and every extra) must be the lock's version of that package.
LOCK_MATCHES_PYPROJECT := import re, sys, tomllib; \
	project = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
	wanted = project["dependencies"] + [r for rs in project.get("optional-dependencies", {}).values() for r in rs]; \
	name = lambda r: re.sub(r"[-_.]+", "-", re.split(r"[\[=<>!~; ]", r, maxsplit=1)[0]).lower(); \
	locked = {name(m[1]) + "==" + m[2] for m in re.finditer(r"^([A-Za-z0-9._-]+)==([^ ;\\]+)", open(sys.argv[1]).read(), re.M)}; \
	stale = [r for r in wanted if "==" in r and name(r) + "==" + r.split("==")[1].strip() not in locked]; \
	sys.exit(sys.argv[1] + " does not match pyproject.toml (" + ", ".join(stale) + "): run make lock" if stale else 0)

dev: venv
	$(BIN)/sopflow dev

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# Fault injection at full size: 200 compressed lifecycles, 5 worker SIGKILLs, 1 dev server restart, a flaky SMTP
# relay; prints its counts and fails on any lost, duplicated or stuck email, record or workflow.
chaos: venv
	$(BIN)/python -m tests.chaos.harness --clients 200 --kills 5 --restarts 1

# The production topology under faults: 3 worker processes on the PostgreSQL at 127.0.0.1:5432 (a database of its own,
# created and dropped), 8 random worker SIGKILLs, PostgreSQL stopped and started once (needs Debian's pg_ctlcluster,
# as root), a flaky relay with slow conversations that outlast the email activity's timeout.
chaos-pg: venv
	$(BIN)/python -m tests.chaos.harness --clients 200 --database postgres --workers 3 --kills 8 --restarts 0 \
		--db-restarts 1 --slow-every 15

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
	$(BIN)/python -m bench.work_queue
	$(BIN)/python -m bench.forecast_source
	$(BIN)/python -m bench.forecast
	$(BIN)/python -m bench.sandbox
	$(BIN)/python -m bench.io_work
	$(BIN)/python -m bench.answers

# Local dev state only (Temporal db, records db, captured mail); the venv stays.
clean:
	rm -rf .sopflow

# The README's screenshots of the web board (docs/board.png, docs/deal.png), taken by its browser test in Chromium.
screenshots: venv
	SOPFLOW_SCREENSHOTS=docs $(BIN)/python -m pytest -q tests/starter/test_web_browser.py -k card_moves_to_the_next_stage
