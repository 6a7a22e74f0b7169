"""Check that a pruned model carries the sparsity its profile allocated.

A pruner that removes ⌊s · row_length⌋ weights per row (Wanda) or thresholds per block
(SparseGPT) lands within one weight per row of the allocated ratio, i.e. within
1 / row_length; that is the tolerance used here.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from owl_plugin.profile import SparsityProfile


class Measured(NamedTuple):
    """Fraction of exact zeros in a weight, and its row length (in_features)."""

    sparsity: float
    row_length: int


def measure(weight: torch.Tensor) -> Measured:
    """Measured sparsity of one 2-D weight."""
    return Measured(float((weight == 0).sum()) / weight.numel(), int(weight.shape[-1]))


@torch.no_grad()
def measured_sparsities(model: nn.Module, profile: SparsityProfile) -> dict[str, Measured]:
    """Module name → measured sparsity for every module of ``profile`` (missing modules raise)."""
    modules = dict(model.named_modules())
    missing = [name for name in profile.modules if name not in modules]
    if missing:
        raise ValueError(f"the model has no module named {missing[0]!r} (and {len(missing) - 1} more) from the profile")
    return {name: measure(modules[name].weight) for name in profile.modules}


def profile_mismatches(
    profile: SparsityProfile, measured: dict[str, Measured], *, rows_tolerance: float = 1.0
) -> list[str]:
    """Descriptions of modules whose measured sparsity is off by more than ``rows_tolerance`` weights per row."""
    problems = []
    for name, entry in profile.modules.items():
        got = measured[name]
        if abs(got.sparsity - entry.sparsity) > rows_tolerance / got.row_length + 1e-9:
            problems.append(f"{name}: allocated {entry.sparsity:.4f}, measured {got.sparsity:.4f}")
    return problems


def overall_sparsity(measured: dict[str, Measured], profile: SparsityProfile) -> float:
    """Parameter-weighted measured sparsity over the profile's modules."""
    total = sum(e.num_params for e in profile.modules.values())
    return sum(measured[n].sparsity * e.num_params for n, e in profile.modules.items()) / total
