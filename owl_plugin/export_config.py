"""The config.json of an exported checkpoint: the source's, minus stale sparsity metadata, plus ours.

Dense exports carry no ``sparsity_config`` and no sparsity-only ``quantization_config`` (neither
owl_sparse nor llmcompressor's compressed-tensors sparsity record), so every engine reads them
as the plain model they are. Compact exports get SPEC.md's ``quantization_config`` and the load
guard of ``owl_plugin.formats.compact_config``. A checkpoint that is really quantized is refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from owl_plugin.formats.compact_config import GUARD_KEY, add_guard, is_compact, quantization_config

FORMATS = ("dense", "compact")


def _is_sparsity_only(quant: Mapping[str, Any]) -> bool:
    """True for llmcompressor's record of an unquantized, uncompressed sparse model."""
    if quant.get("quant_method") != "compressed-tensors" or quant.get("config_groups"):
        return False
    sparsity = quant.get("sparsity_config") or {}
    return quant.get("format") in (None, "dense") and sparsity.get("format") in (None, "dense")


def check_source_config(config: Mapping[str, Any], *, source: str) -> None:
    """Refuse checkpoints whose tensors are not plain (or owl_sparse) weights.

    Args:
        config: the source config.json.
        source: the source folder, for the error message.

    Raises:
        ValueError: the source is quantized or stored in another compressed format.
    """
    quant = config.get("quantization_config")
    if quant is None or is_compact(config) or (isinstance(quant, Mapping) and _is_sparsity_only(quant)):
        return
    method = quant.get("quant_method") if isinstance(quant, Mapping) else quant
    raise ValueError(
        f"{source} is stored with quantization_config quant_method={method!r}; owl export reads dense or "
        "owl_sparse checkpoints only. For an llmcompressor output, save it with save_compressed=False "
        "(or export the pruned model before quantizing it)"
    )


def output_config(config: Mapping[str, Any], *, format: str, modules: Sequence[str]) -> dict[str, Any]:
    """The config.json to write.

    Args:
        config: the source config.json.
        format: ``"dense"`` or ``"compact"``.
        modules: compressed modules (compact only), in model order.

    Returns:
        A new dict.
    """
    if format not in FORMATS:
        raise ValueError(f"format={format!r} is not supported; choose one of {FORMATS}")
    result = dict(config)
    result.pop("sparsity_config", None)
    result.pop("quantization_config", None)  # check_source_config() allowed only sparsity records
    result.pop(GUARD_KEY, None)  # the load guard, or an explicit weights file name: ours are the standard names
    if format == "compact":
        result["quantization_config"] = quantization_config(modules)
        add_guard(result)
    return result
