"""Compact MoE checkpoints in transformers: decompress each expert before transformers fuses the experts.

A pruned Qwen3-MoE / Mixtral checkpoint stores every expert matrix as its own 2-D tensor
(``mlp.experts.<e>.gate_proj.weight``, Mixtral ``block_sparse_moe.experts.<e>.w1.weight``), and
transformers 5 merges them while loading into fused 3-D parameters (``experts.gate_up_proj``) with a
``WeightConverter`` (``MergeModulelist`` + ``Concatenate``). In a compact export those matrices are
``<module>.weight_values/_bitmask/_shape``. :func:`expert_conversions` rewrites each of the model's
expert converters (as transformers' own compressed-tensors quantizer does for its packed experts):
the dense sources are anchored with ``$`` (so they no longer swallow the compact parts), the three
parts of every source join the same bucket, and :class:`OwlSparseDecompressExperts` runs first,
turning each expert's parts into its dense matrix, before the merge. The fused parameters come out
bit-identical to loading the dense checkpoint; then the quantizer packs them for the sparse kernels
(:mod:`owl_plugin.integrations.transformers.sparse_experts`, unless ``OWL_SPARSE_MOE=0``).

After loading, :func:`restore_conversions` puts the original converters back so that
``save_pretrained`` writes the ordinary per-expert dense layout.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from transformers.core_model_loading import ConversionOps, WeightConverter

from owl_plugin.formats.compact import BITMASK_SUFFIX, SHAPE_SUFFIX, VALUES_SUFFIX, CompactFormatError, decompress

PARTS = (VALUES_SUFFIX, BITMASK_SUFFIX, SHAPE_SUFFIX)
#: a per-expert tensor or module name (``...experts.<e>.<projection>``, optionally ``.weight``)
EXPERT_NAME = re.compile(r"\.experts\.\d+\.[^.]+(\.weight)?$")


def _weight_sources(converter: WeightConverter) -> list[str]:
    return [p for p in converter.source_patterns if p.rstrip("$").endswith(".weight")]


def is_expert_converter(converter: Any) -> bool:
    """True for a model converter that merges per-expert ``.weight`` tensors into fused experts."""
    return (isinstance(converter, WeightConverter) and bool(_weight_sources(converter))
            and all("experts" in p for p in converter.source_patterns))


class OwlSparseDecompressExperts(ConversionOps):
    """Per source weight pattern: the experts' compact parts → their dense matrices, in expert order.

    ``original`` is the model's converter this one replaces (restored after loading).
    """

    def __init__(self, original: WeightConverter) -> None:
        self.original = original

    def convert(self, input_dict: dict[str, Any], source_patterns: list[str] | None = None,
                target_patterns: list[str] | None = None, *, full_layer_name: str = "", **kwargs: Any,
                ) -> dict[str, Any]:
        """Returns the input with, for every weight pattern ``p``, ``p$`` → [dense expert matrices]."""
        out: dict[str, Any] = {}
        for pattern in _weight_sources(self.original):
            anchored = pattern.rstrip("$") + "$"
            dense = input_dict.pop(anchored, None)
            parts = {suffix: input_dict.pop(pattern.rstrip("$") + suffix.removeprefix("weight") + "$", None)
                     for suffix in PARTS}
            present = [s for s, tensors in parts.items() if tensors is not None]
            if not present:
                if dense is not None:
                    out[anchored] = dense
                continue
            if dense is not None or len(present) != len(PARTS):
                raise CompactFormatError(
                    f"{full_layer_name}: the experts of {pattern!r} mix dense and compact tensors or lack "
                    f"{sorted(set(PARTS) - set(present))}; export the checkpoint again with `owl export --format "
                    "compact` (every expert of a block compressed)")
            values, bitmasks, shapes = (parts[s] if isinstance(parts[s], list) else [parts[s]] for s in PARTS)
            if not (len(values) == len(bitmasks) == len(shapes)):
                raise CompactFormatError(f"{full_layer_name}: {len(values)} values, {len(bitmasks)} bitmasks and "
                                         f"{len(shapes)} shapes for the experts of {pattern!r}")
            out[anchored] = [decompress(v, b, s, name=f"{full_layer_name} ({pattern}, expert {i})")
                             for i, (v, b, s) in enumerate(zip(values, bitmasks, shapes, strict=True))]
        out.update(input_dict)  # anything else the converter collects passes through
        return out


def expert_conversions(conversions: list[Any]) -> list[Any]:
    """The model's conversions with every expert converter made to read compact parts too."""
    updated = []
    for converter in conversions:
        if not is_expert_converter(converter):
            updated.append(converter)
            continue
        weights = _weight_sources(converter)
        anchored = [p.rstrip("$") + "$" for p in weights]
        compact = [p.rstrip("$") + suffix.removeprefix("weight") + "$" for suffix in PARTS for p in weights]
        other = [p for p in converter.source_patterns if p not in weights]
        updated.append(WeightConverter(
            source_patterns=anchored + compact + other,
            target_patterns=converter._original_target_patterns,
            operations=[OwlSparseDecompressExperts(converter), *converter.operations],
        ))
    return updated


def restore_conversions(conversions: list[Any]) -> list[Any]:
    """Undo :func:`expert_conversions` (for ``save_pretrained``, which reverses the model's converters)."""
    restored = []
    for converter in conversions:
        ops = [op for op in getattr(converter, "operations", ()) if isinstance(op, OwlSparseDecompressExperts)]
        restored.append(ops[0].original if ops else converter)
    return restored


def merged_into_fused_experts(model: torch.nn.Module, name: str) -> bool:
    """True if ``name`` (module or ``.weight``) is a per-expert matrix that ``model`` holds inside fused experts."""
    if not EXPERT_NAME.search(name):
        return False
    module = name.removesuffix(".weight")
    try:
        model.get_submodule(module)
        return False  # the model has it as a module of its own
    except AttributeError:
        return any(isinstance(getattr(m, "down_proj", None), torch.nn.Parameter) and m.down_proj.dim() == 3
                   for m in model.modules())
