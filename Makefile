# Set-up is part of every target: a fresh clone needs nothing but Python and make.
# PYTHON picks the interpreter (3.11 by default; PYTHON=python3.12 works the same way). Each Python
# needs its lock file, requirements/py<version>.txt: 3.11 and 3.12 have one (3.13 has none yet).
# Two environments: the core (`make run`: the library and the cpu-kernels extra, in CORE_VENV;
# `make test-core` adds the test tools there) and the full one (`make test`, `make bench`,
# `make docs`: every extra, in VENV).
# The exact versions installed are those of requirements/py<version>.txt (constraints), so a set-up
# is reproducible; pyproject.toml itself only declares ranges.
PYTHON ?= python3.11
PYVER := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
ifeq ($(PYVER),)
$(error '$(PYTHON)' does not run: install that Python, or pass PYTHON=/path/to/python3.x)
endif
LOCK := requirements/py$(PYVER).txt
ifeq ($(wildcard $(LOCK))$(filter lock,$(MAKECMDGOALS)),)
$(error no lock file for Python $(PYVER) ($(LOCK)); tested: $(patsubst requirements/py%.txt,%,$(wildcard requirements/py*.txt)))
endif
comma := ,
VENV ?= $(if $(filter 3.11,$(PYVER)),.venv,.venv-$(PYVER))
CORE_VENV ?= .venv-core-$(PYVER)
# The timm peer (torch, the bench extra) only where the lock has torch: requirements/py3.11.txt (which
# holds torch's CUDA build and its nvidia-* wheels, several GB: one reason `make run` uses the core).
EXTRAS ?= interop,onnx,tfds,serve,cpu-kernels,test,docs$(if $(shell grep -q '^torch==' $(LOCK) && echo y),$(comma)bench)
PY := $(VENV)/bin/python
# A set-up is redone when pyproject.toml, this file or the lock changes.
SUM := $(shell cat pyproject.toml Makefile $(LOCK) | cksum | cut -d' ' -f1)
STAMP := $(VENV)/.installed-$(SUM)
CORE_STAMP := $(CORE_VENV)/.installed-$(SUM)
CORE_TEST_STAMP := $(CORE_VENV)/.installed-test-$(SUM)
WORKDIR ?= runs/digits
PYTEST_ARGS ?=
# tcmalloc, where installed (Debian/Ubuntu: apt install libtcmalloc-minimal4), is preloaded for
# training and benchmarks: under glibc's malloc XLA's CPU backend page-faults its per-step
# temporary buffer on every step (vitjax/hostmem.py; docs/performance.md).
TCMALLOC ?= $(firstword $(wildcard /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib64/libtcmalloc_minimal.so.4))
# Tests run in TEST_WORKERS processes (pytest-xdist), each taking a whole test file at a time so a
# file's fixtures are built once; most tests keep one core busy, so two workers use both of a 2-core
# machine. TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
# pytest exits 5 when a selection (-k) matches nothing in one of the two trees: that is not a failure.
PYTEST = $(1) -m pytest -q $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile) $(2) $(PYTEST_ARGS) || [ $$? -eq 5 ]

.PHONY: lint setup setup-core run test test-fast test-core bench docs lock

# $(1): the virtual environment, $(2): the extras, $(3): non-empty to add PaddleClas's files (tests).
define install
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
	$(1)/bin/python -m pip install -q -c $(LOCK) -e ".[$(2)]"
	# PaddleClas's model and preprocessing code, the reference the tests compare against (its
	# package __init__ needs the whole PaddleClas stack, so only its files are used).
	$(if $(3),$(1)/bin/python -m pip install -q -c $(LOCK) --no-deps paddleclas)
	# Triton's own HTTP client, the peer the serving tests hold our KServe v2 protocol to. Its metadata
	# caps ml-dtypes (<= 0.5.4) below what JAX needs, though its HTTP client never imports it, so it and
	# its HTTP stack (pinned in the lock) are installed without resolving dependencies.
	$(if $(3),$(if $(shell grep -q '^tritonclient==' $(LOCK) && echo y),$(1)/bin/python -m pip install -q -c $(LOCK) --no-deps tritonclient python-rapidjson geventhttpclient gevent greenlet zope.event zope.interface brotli))
	find $(1) -maxdepth 1 -name '.installed-*' ! -name '*-$(SUM)' -delete
	touch $@
endef

$(STAMP): pyproject.toml Makefile $(LOCK)
	$(call install,$(VENV),$(EXTRAS),paddleclas)

# The core alone (no Paddle, no TensorFlow, no torch): what the main job needs, and the proof that
# `vitjax` needs none of them. The test tools go into the same environment for test-core.
$(CORE_STAMP): pyproject.toml Makefile $(LOCK)
	$(call install,$(CORE_VENV),cpu-kernels)

$(CORE_TEST_STAMP): pyproject.toml Makefile $(LOCK)
	$(call install,$(CORE_VENV),cpu-kernels$(comma)test,paddleclas)

setup: $(STAMP)

setup-core: $(CORE_STAMP)

# The main job on its embedded default: train a small DeiT on scikit-learn's digits, in the core
# environment (docs/development.md gives its size and set-up time).
run: $(CORE_STAMP)
	$(if $(TCMALLOC),LD_PRELOAD=$(TCMALLOC)) $(CORE_VENV)/bin/python -m vitjax.main --workdir $(WORKDIR)

# Every test, the slow ones included, in two processes: the core tree never imports Paddle, the
# interop tree imports it first (Paddle crashes when imported after TensorFlow).
test: $(STAMP)
	$(call PYTEST,$(PY),tests/vitjax)
	$(call PYTEST,$(PY),tests/interop)

test-fast: $(STAMP)
	$(call PYTEST,$(PY),-m "not slow" tests/vitjax)
	$(call PYTEST,$(PY),-m "not slow" tests/interop)

# The core tree in an environment without the interop and tfds extras (CI runs it on Python 3.12).
test-core: $(CORE_TEST_STAMP)
	$(call PYTEST,$(CORE_VENV)/bin/python,-m "not slow or notebook or install" tests/vitjax)

bench: $(STAMP)
	$(PY) -m benchmarks.run $(if $(TCMALLOC),--allocator tcmalloc)

# ruff ([tool.ruff] in pyproject.toml): lint and formatting, as CI checks them.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The documentation site (docs/ and the API reference from the docstrings) into site/. --strict: a
# broken link or anchor, a page missing from mkdocs.yml's nav or an unresolvable API reference fails.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# Re-resolve requirements/py$(PYVER).txt: the newest releases the ranges in pyproject.toml allow.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock && .venv-lock/bin/python -m pip install -q --upgrade pip
	.venv-lock/bin/python -m pip install -q -e ".[$(EXTRAS)]" && .venv-lock/bin/python -m pip install -q --no-deps paddleclas==2.6.0
	{ echo "# Exact versions tested on Python $(PYVER) (make lock PYTHON=python$(PYVER) re-resolves them)."; .venv-lock/bin/python -m pip freeze --exclude-editable; } > $(LOCK)
	rm -rf .venv-lock
