# Two commands do all the set-up on a fresh machine: `make demo`, `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast test-faults bench build lint clean

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

build: $(STAMP)
	$(PY) setup.py --quiet build_ext --inplace

demo: build
	$(PY) -m bench demo

test: build
	$(PY) -m pytest -q tests

test-fast: build
	$(PY) -m pytest -q tests -m "not faults"

# The fault tests alone (kill -9, PostgreSQL and broker restarts, broken
# links, overload): about a minute each; `make test` runs them too.
test-faults: build
	$(PY) -m pytest -q tests -m faults

bench: build
	$(PY) -m pytest -q bench --benchmark-only

lint: $(STAMP)
	$(VENV)/bin/ruff check ingestd bench tests
	$(VENV)/bin/ruff format --check ingestd bench tests

clean:
	rm -rf build $(VENV) ingestd/**/*.so ext/*.c .ingestd
