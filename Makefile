# Two commands do all the set-up on a fresh machine: `make demo`, `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast bench build lint clean

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

bench: build
	$(PY) -m pytest -q bench --benchmark-only

lint: $(STAMP)
	$(VENV)/bin/ruff check ingestd bench tests
	$(VENV)/bin/ruff format --check ingestd bench tests

clean:
	rm -rf build $(VENV) ingestd/**/*.so ext/*.c .ingestd
