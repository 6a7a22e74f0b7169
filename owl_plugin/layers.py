"""Find a causal LM's decoder blocks and the linear layers inside them.

Works on any PyTorch model that keeps its decoder blocks in one ``nn.ModuleList``
(Llama, Mistral, Qwen, OPT's ``model.decoder.layers``, GPT-2's ``transformer.h``, ...).
Modules are always addressed by their full name, never by position.
"""

from __future__ import annotations

from torch import nn

from owl_plugin.coverage import check_supported, is_router


def find_decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return ``(name, blocks)`` for the model's stack of decoder blocks.

    The stack is the ``nn.ModuleList`` whose length is ``config.num_hidden_layers`` when the
    model has a config, otherwise the longest ``nn.ModuleList`` holding linear layers.
    """
    expected = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList)
        and len(module) > 0
        and any(isinstance(m, nn.Linear) for m in module.modules())
    ]
    if expected is not None:
        matching = [c for c in candidates if len(c[1]) == expected]
        if matching:
            return matching[0]
    if not candidates:
        raise ValueError(
            f"no decoder blocks found in {type(model).__name__}: expected an nn.ModuleList of blocks "
            "containing nn.Linear layers (e.g. model.model.layers)"
        )
    return max(candidates, key=lambda c: len(c[1]))


def block_names(model: nn.Module) -> list[str]:
    """Full names of the decoder blocks, in order (``model.layers.0``, ...)."""
    prefix, blocks = find_decoder_blocks(model)
    return [f"{prefix}.{i}" for i in range(len(blocks))]


def find_linears(block: nn.Module, prefix: str) -> dict[str, nn.Linear]:
    """Full name → ``nn.Linear`` for every linear layer inside ``block``, in module order.

    An MoE router/gate (``owl_plugin.coverage.is_router``) is not a prunable linear: it is left out.
    """
    return {
        f"{prefix}.{name}": module for name, module in block.named_modules()
        if isinstance(module, nn.Linear) and not is_router(name, module)
    }


def prunable_linears(model: nn.Module) -> dict[str, dict[str, nn.Linear]]:
    """Decoder block name → its linears (full names). Embeddings and the LM head are not included.

    Raises ``owl_plugin.coverage.UnsupportedArchitecture`` (a ``ValueError``) when a block also holds
    prunable weights that are not ``nn.Linear`` (e.g. fused 3-D MoE experts not yet split by
    ``owl_plugin.experts.linearized``), naming them.
    """
    check_supported(model)
    prefix, blocks = find_decoder_blocks(model)
    result = {}
    for i, block in enumerate(blocks):
        name = f"{prefix}.{i}"
        linears = find_linears(block, name)
        if not linears:
            raise ValueError(f"decoder block {name!r} has no nn.Linear layers to prune")
        result[name] = linears
    return result
