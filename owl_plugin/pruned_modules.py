"""Which weights of a checkpoint may be stored compressed, decided from tensor names alone.

With a sparsity profile, the candidates are exactly the profile's modules. Without one, they
are the 2-D ``*.weight`` tensors inside the decoder blocks, found by name: the blocks are the
``<prefix>.<i>.`` family with ``config.num_hidden_layers`` members (``model.layers``,
``transformer.h``, ``model.decoder.layers``, ...). Whether a candidate is really pruned (has
zeros) is only known once its data is read.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from owl_plugin.profile import SparsityProfile

_BLOCK = re.compile(r"^(?P<prefix>.+?)\.(?P<index>\d+)\.")
FLOAT_DTYPES = ("F32", "BF16", "F16")  # safetensors names of the dtypes the compact format stores


def decoder_prefix(names: Iterable[str], *, num_layers: int | None = None) -> str:
    """The name prefix of the decoder blocks, e.g. ``"model.layers"``.

    Args:
        names: tensor names of the checkpoint.
        num_layers: ``config.num_hidden_layers`` if known; the prefix with exactly that many
            blocks wins, otherwise the one with the most blocks.

    Returns:
        The prefix (without the trailing ``.<i>``).

    Raises:
        ValueError: no ``<prefix>.<i>.`` family of names exists.
    """
    indices: dict[str, set[int]] = defaultdict(set)
    for name in names:
        match = _BLOCK.match(name)
        if match:
            indices[match["prefix"]].add(int(match["index"]))
    if not indices:
        raise ValueError("no decoder blocks found among the tensor names (expected names like "
                         "'model.layers.0.self_attn.q_proj.weight'); pass a sparsity profile naming the modules")
    exact = [p for p, found in indices.items() if num_layers is not None and found == set(range(num_layers))]
    if exact:
        return exact[0]
    return max(indices, key=lambda p: len(indices[p]))


def block_of(module: str, prefix: str) -> str:
    """``"model.layers.3"`` for ``"model.layers.3.mlp.up_proj"`` (the module itself if outside the blocks)."""
    match = re.match(rf"^{re.escape(prefix)}\.\d+", module)
    return match.group(0) if match else module


def candidate_modules(
    info: Mapping[str, tuple[str, tuple[int, ...]]],
    config: Mapping[str, Any],
    *,
    profile: SparsityProfile | None = None,
) -> list[str]:
    """Module names whose ``.weight`` is stored compressed if it holds zeros, in checkpoint order.

    Args:
        info: tensor name → (safetensors dtype, shape) of the dense checkpoint, in order.
        config: the checkpoint's config.json (for ``num_hidden_layers``).
        profile: if given, its modules are the candidates.

    Returns:
        Full module names (without ``.weight``).

    Raises:
        ValueError: a profile module has no 2-D float weight in the checkpoint.
    """
    if profile is not None:
        for module in profile.modules:
            entry = info.get(f"{module}.weight")
            if entry is None:
                raise ValueError(f"profile module {module!r} has no tensor {module}.weight in the checkpoint; "
                                 "the profile belongs to another model")
            dtype, shape = entry
            if len(shape) != 2 or dtype not in FLOAT_DTYPES:
                raise ValueError(f"profile module {module!r}: {module}.weight is {dtype} {list(shape)}, but only 2-D "
                                 f"{'/'.join(FLOAT_DTYPES)} linear weights can be stored compressed")
        wanted = set(profile.modules)
        return [name[: -len(".weight")] for name in info if name.endswith(".weight") and name[:-7] in wanted]
    prefix = decoder_prefix(info, num_layers=config.get("num_hidden_layers"))
    pattern = re.compile(rf"^{re.escape(prefix)}\.\d+\..+\.weight$")
    return [
        name[: -len(".weight")]
        for name, (dtype, shape) in info.items()
        if pattern.match(name) and len(shape) == 2 and dtype in FLOAT_DTYPES
    ]
