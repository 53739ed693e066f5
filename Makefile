# Fresh machine, two commands:  `make quickstart`  and  `make test`.
# Both create .venv, install the CPU build of PyTorch and genrec with its dev extras, then run.
# `make docs` builds the documentation site into site/ (the dev extras include MkDocs).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
# On a machine without a local PyTorch wheel cache, point pip at PyTorch's CPU wheel index to avoid a
# several-GB CUDA download, e.g. make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

.PHONY: setup quickstart test lint docs reliability
setup: $(VENV)/.genrec-setup

$(VENV)/.genrec-setup: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

quickstart: setup
	$(VENV)/bin/genrec quickstart

test: setup
	$(VENV)/bin/pytest -q

# the fault corpus (docs/reliability.md): refused inputs, damaged runs, crashes and the fuzz tests
reliability: setup
	$(VENV)/bin/pytest -q -m reliability

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks docs/hooks

# The documentation site (mkdocs.yml) into site/; --strict: a broken link or a stale generated page fails.
# The test suite runs the same build (tests/core/test_docs_site.py).
docs: setup
	$(VENV)/bin/mkdocs build --strict
