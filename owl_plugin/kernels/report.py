"""Which layers of a loaded model run the sparse kernels, and on which path (for validation and benchmarks)."""

from __future__ import annotations

import os
from typing import Any

from owl_plugin.kernels.pack import PackedLinear

DENSE_ENV = "OWL_SPARSE_DENSE"  # "1": the loaders keep dense layers (no sparse kernels)
SPARSE_MOE_ENV = "OWL_SPARSE_MOE"  # "1" / "0": pack MoE experts or not; unset: each engine's default


def dense_requested() -> bool:
    """True when ``OWL_SPARSE_DENSE=1`` asks the loaders for dense layers instead of the sparse kernels.

    Raises:
        ValueError: any other value than 0/1/true/false, naming it.
    """
    value = os.environ.get(DENSE_ENV, "0").strip().lower()
    if value not in {"0", "1", "", "false", "true"}:
        raise ValueError(f"{DENSE_ENV}={value!r}: use 1 (dense weights) or 0 (sparse kernels, the default)")
    return value in {"1", "true"}


def sparse_moe_requested(*, default: bool) -> bool:
    """Whether a loader packs fused MoE experts: ``OWL_SPARSE_MOE=1`` yes, ``0`` no, unset (or ``auto``) the
    engine's ``default`` (both engines pack them: faster than their own dense experts in every measured case,
    examples/results/moe_experts*.md). Never with ``OWL_SPARSE_DENSE=1``.

    Raises:
        ValueError: any other value than 0/1/true/false/auto, naming it.
    """
    value = os.environ.get(SPARSE_MOE_ENV, "").strip().lower()
    if value not in {"", "auto", "0", "1", "false", "true"}:
        raise ValueError(f"{SPARSE_MOE_ENV}={value!r}: use 1 (pack MoE experts), 0 (keep them dense) or auto")
    if dense_requested():
        return False
    return default if value in {"", "auto"} else value in {"1", "true"}


def packed_linears(model: Any) -> list[PackedLinear]:
    """The :class:`PackedLinear` of every module of ``model`` on the sparse kernels (vLLM's ``owl_packed``
    attribute and the expert matrices of its MoE layers, ``owl_packed_experts``; transformers'
    ``OwlSparseLinear.packed``), each once: a wrapper that forwards attribute
    reads to the layer it wraps (vLLM's LoRA layers) reaches the same one."""
    found = {id(p): p for m in model.modules()
             for p in (getattr(m, "owl_packed", None), getattr(m, "packed", None),
                       *getattr(m, "owl_packed_experts", ()))
             if isinstance(p, PackedLinear)}
    return list(found.values())


def sparse_layer_report(model: Any) -> dict[str, Any]:
    """``{"packed_layers": n, "packed_bytes": b, **kernel_info()}`` for the modules of ``model`` that hold a
    :class:`PackedLinear` (vLLM's ``owl_packed`` attribute, transformers' ``OwlSparseLinear.packed``);
    ``{"packed_layers": 0}`` when none does (plus ``dense_fallback``, the measurements, when the loader kept
    every layer dense because the sparse kernel was slower on this CPU)."""
    packed = packed_linears(model)
    from owl_plugin.kernels.fallback import kept_dense

    if not packed:
        kept = kept_dense()  # every layer measured faster dense on this CPU (fallback.py)
        return {"packed_layers": 0, "dense_fallback": kept} if kept else {"packed_layers": 0}
    from owl_plugin.kernels.dispatch import kernel_info

    return {"packed_layers": len(packed), "packed_bytes": sum(p.nbytes() for p in packed), **kernel_info()}
