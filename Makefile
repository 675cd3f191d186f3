# `make demo` and `make test` set everything up from the repo's own files.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
CORE_SOURCES := $(wildcard simulator/csrc/*.cpp simulator/csrc/*.h)

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt requirements-build.txt CMakeLists.txt $(CORE_SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -r requirements-build.txt
	$(PIP) install -q -c constraints.txt --no-build-isolation -e '.[test,ray]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ember demo

test: $(STAMP)
	$(PY) -m pytest -q -x -p no:cacheprovider tests

bench: $(STAMP)
	$(PY) benchmarks/frontend.py
	$(PIP) install -q -c constraints.txt --no-build-isolation -e '.[bench]' && $(PY) benchmarks/fidelity.py

clean:
	rm -rf build $(VENV)
