# Every target bootstraps .venv idempotently from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint llm-env clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch pulls several GB of CUDA wheels.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m spatial_audiocaps.demo --out out

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

bench: $(STAMP)
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

lint: $(STAMP)
	$(PY) -m ruff check .

# vLLM pins its own torch and transformers: keep it out of .venv.
llm-env:
	$(PYTHON) -m venv .venv-llm
	.venv-llm/bin/python -m pip install -q --upgrade pip
	.venv-llm/bin/python -m pip install -q -e '.[llm]'

clean:
	rm -rf $(VENV) .venv-llm out .pytest_cache .ruff_cache
