"""llmcompressor adapter: allocation modifiers that give Wanda / SparseGPT per-layer ratios.

Accessing any name below (or importing ``.modifiers``) registers ``OWLAllocationModifier``,
``AlphaAllocationModifier``, ``DLPAllocationModifier``, ``ATPAllocationModifier`` and
``ProfileAllocationModifier`` (a saved profile, e.g. from ``owl tune``) with llmcompressor's
``ModifierFactory``, so YAML recipes can name them:

    sparsity_stage:
      sparsity_modifiers:
        OWLAllocationModifier: {owl_m: 5, owl_lambda: 0.08}
        WandaPruningModifier: {sparsity: 0.7, mask_structure: "0:0", targets: ["re:model\\\\.layers\\\\.\\\\d+$"]}

The package itself imports nothing heavy, so the ``owl`` CLI can list ``owl prune`` cheaply.
"""

from __future__ import annotations

from typing import Any

__all__ = ["APPLIED_PROFILES", "ATPAllocationModifier", "AllocationModifier", "AlphaAllocationModifier",
           "DLPAllocationModifier", "OWLAllocationModifier", "ProfileAllocationModifier", "register_modifiers"]


def register_modifiers() -> None:
    """Import llmcompressor and register the allocation modifiers (idempotent)."""
    from owl_plugin.integrations.llmcompressor import modifiers  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in __all__:
        from owl_plugin.integrations.llmcompressor import modifiers

        return getattr(modifiers, name)
    raise AttributeError(name)
