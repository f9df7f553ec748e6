# Set-up is part of every target: a fresh clone needs nothing but Python 3.11.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)
WORKDIR ?= runs/digits
PYTEST_ARGS ?=

.PHONY: setup run test test-fast bench

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[interop,test]"
	# PaddleClas's model code, the reference our parity tests compare against (its
	# package __init__ needs the whole PaddleClas stack, so only its files are used).
	$(PY) -m pip install -q --no-deps paddleclas==2.6.0
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

# The main job on its embedded default: train a small DeiT on scikit-learn's digits.
run: $(STAMP)
	$(PY) -m vitjax.main --workdir $(WORKDIR)

# Every test, the slow ones included.
# Two processes: the core tree never imports Paddle, the interop tree imports it first
# (Paddle crashes when imported after TensorFlow).
test: $(STAMP)
	$(PY) -m pytest -q tests/vitjax $(PYTEST_ARGS)
	$(PY) -m pytest -q tests/interop $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests/vitjax $(PYTEST_ARGS)
	$(PY) -m pytest -q -m "not slow" tests/interop $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks.run
