# Two commands do all the set-up on a fresh machine with Python 3.11+:
#   make demo   -> .venv, install robustjax, run the robustness report into ./robustjax-report/
#   make test   -> .venv, install robustjax with its test extras, run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test install install-test clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install -q -e .

install-test: $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'

demo: install
	$(BIN)/robustjax report --out robustjax-report

test: install-test
	$(BIN)/python -m pytest -n 2 --durations=15 $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
