"""Shared by the export / compact-format / transformers-loader tests: tiny real Llama checkpoints.

Everything here is real transformers: a random ``LlamaForCausalLM`` saved with ``save_pretrained``,
pruned by magnitude (real zeros), and reloaded with ``AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

PYTHON = sys.executable
BLOCK_LINEAR_COUNT = 4 * 7  # 4 blocks x (q, k, v, o, gate, up, down)


def magnitude_prune_(model: nn.Module, sparsity: float) -> None:
    """Zero the smallest ``ceil(sparsity * in)`` |w| of every row of every linear in the decoder blocks."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and ".layers." in name:
                weight = module.weight
                k = math.ceil(sparsity * weight.shape[1])
                smallest = weight.abs().argsort(dim=1)[:, :k]
                weight.scatter_(1, smallest, 0.0)


def tiny_llama(folder: Path, *, dtype: torch.dtype, sparsity: float = 0.7, seed: int = 0) -> Path:
    """Save a random 4-block Llama (hidden 64), pruned by magnitude, in ``dtype``, plus a recipe file."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256, max_position_embeddings=128)
    model = LlamaForCausalLM(config)
    if sparsity:
        magnitude_prune_(model, sparsity)
    model.to(dtype).save_pretrained(folder)
    (folder / "recipe.yaml").write_text("pruning_stage:\n  obcq_modifiers: {}\n")
    (folder / "tokenizer_config.json").write_text('{"model_max_length": 128}\n')
    return folder


def stored_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a (small) checkpoint folder, as stored."""
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, framework="pt") as handle:
            tensors.update({key: handle.get_tensor(key) for key in handle.keys()})  # noqa: SIM118 (not a dict)
    return tensors


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bytes."""
    return (a.dtype == b.dtype and a.shape == b.shape
            and torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8)))


def assert_state_equal(loaded: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    """Every reference tensor is in ``loaded`` with the same bits."""
    missing = sorted(set(reference) - set(loaded))
    assert not missing, f"not loaded: {missing[:5]}"
    different = [name for name, tensor in reference.items() if not same_bits(loaded[name], tensor)]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:5]}"


def load_state(folder: Path, **kwargs) -> dict[str, torch.Tensor]:
    """``AutoModelForCausalLM.from_pretrained(folder).state_dict()``."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, **kwargs).state_dict()


def run_python(code: str, *args: str, env: dict[str, str] | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -c code args...`` in a fresh interpreter (nothing imported beforehand)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([PYTHON, "-c", code, *args], capture_output=True, text=True, env=full_env, check=False,
                          timeout=timeout)
