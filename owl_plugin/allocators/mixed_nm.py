"""Mixed N:M: one N per allocation unit for N:M masks, from a layerwise allocation.

An N:M mask (llmcompressor's ``mask_structure: "N:M"``) zeroes exactly N of every M
consecutive weights along a linear's input dimension, so its sparsity is N / M and cannot
follow an arbitrary ratio. OWL's structured variant (reference ``prune_wanda_outlier_structure``,
``wanda_owl_structure`` in luuyin/OWL ``lib/prune_all.py``; OWL arXiv 2310.05175) keeps M
fixed and moves N per decoder block:

    reference:  Δ_l = (D_l − min D) / (max D − min D) · Lamda,   Δ_l ← Δ_l − mean Δ
                N_l = N₀ − round(Δ_l)

with D_l the block's outlier ratio and Lamda a spread in *weights per group* (its README uses
``--sparsity_type 5:8 --Lamda 2``). Here the shift comes from the unit's ratio s_l allocated
around S = N₀ / M by any allocator (OWL, AlphaPruning, ...):

    Δ_l = (S − s_l) · M,        N_l = N₀ − round(Δ_l),   clipped to [max(1, ⌈lo·M⌉), min(M − 1, ⌊hi·M⌋)]

For OWL with band 2λ (``owl_ratios``), (S − s_l)·M = (r_l − mean r)·M with r spanning 2λ, so
this is the reference formula with Lamda = 2λM: ``--Lamda 2`` at M = 8 is λ = 0.125. Rounding
(numpy's half-to-even, as the reference) does not keep the mean: the achieved sparsity
Σ p_l N_l / M / Σ p_l generally differs from S, and callers must report it.

N = 0 is excluded on purpose: llmcompressor reads N = 0 as "unstructured", and SparseGPT's
unstructured path prunes one weight per block even at ratio 0.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

logger = logging.getLogger(__name__)

_PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class MaskStructure:
    """llmcompressor's ``mask_structure``: N zeros in every M weights; ``0:0`` is unstructured."""

    n: int
    m: int

    @property
    def unstructured(self) -> bool:
        return self.n == 0 and self.m == 0

    @property
    def ratio(self) -> float:
        """Sparsity of the mask, N / M (0 for unstructured)."""
        return 0.0 if self.unstructured else self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


def parse_mask_structure(text: object) -> MaskStructure:
    """Parse ``"N:M"`` (0 < N < M) or ``"0:0"``; raise naming the bad value otherwise.

    Example:
        >>> parse_mask_structure("2:4").ratio
        0.5
    """
    match = _PATTERN.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"mask_structure={text!r} is malformed: write \"N:M\" (N zeros in every M weights, e.g. \"2:4\" "
            "or \"4:8\") or \"0:0\" for unstructured"
        )
    n, m = int(match.group(1)), int(match.group(2))
    if (n, m) != (0, 0) and not 0 < n < m:
        raise ValueError(
            f"mask_structure={text!r} is invalid: need 0 < N < M (N zeros in every M weights, e.g. \"2:4\"), "
            "or \"0:0\" for unstructured"
        )
    return MaskStructure(n, m)


class MixedNM(NamedTuple):
    """Per-unit N (zeros per group of M), and whether any N had to be clipped."""

    counts: np.ndarray
    clipped: bool


def mixed_nm_counts(
    ratios: np.ndarray,
    structure: MaskStructure,
    *,
    bounds: tuple[float, float] = (0.0, 0.99),
) -> MixedNM:
    """N_l = N₀ − round((S − s_l) · M) per unit, S = N₀ / M (see module docstring).

    Args:
        ratios: s_l, the units' ratios allocated around S = N₀ / M.
        structure: the base N₀:M (not unstructured).
        bounds: every N_l / M stays in [lo, hi], and 1 ≤ N_l ≤ M − 1.

    Returns:
        ``MixedNM(counts, clipped)``; ``clipped`` is True (and a warning is logged) when a
        rounded N fell outside the allowed range.

    Example:
        >>> mixed_nm_counts(np.array([0.6, 0.5, 0.4]), MaskStructure(4, 8)).counts
        array([5, 4, 3])
    """
    if structure.unstructured:
        raise ValueError("mixed N:M needs an N:M mask_structure, got '0:0' (unstructured)")
    s = np.asarray(ratios, dtype=np.float64)
    if not np.all(np.isfinite(s)):
        raise ValueError(f"ratios contain NaN or inf: {s.tolist()}")
    n0, m = structure.n, structure.m
    shift = (structure.ratio - s) * m
    counts = n0 - np.round(shift).astype(np.int64)
    lo, hi = bounds
    low, high = max(1, math.ceil(lo * m - 1e-9)), min(m - 1, math.floor(hi * m + 1e-9))
    if low > high:
        raise ValueError(f"bounds={bounds!r} leave no N in [1, {m - 1}] for M={m}; widen the bounds")
    clipped = bool(np.any((counts < low) | (counts > high)))
    if clipped:
        logger.warning("mixed %s: N from %d to %d left [%d, %d]; clipped", structure, counts.min(), counts.max(),
                       low, high)
        counts = np.clip(counts, low, high)
    return MixedNM(counts, clipped)


def achieved_mean(counts: np.ndarray, m: int, num_params: np.ndarray) -> float:
    """Parameter-weighted mean sparsity Σ p_l · N_l / M / Σ p_l of a mixed N:M allocation."""
    p = np.asarray(num_params, dtype=np.float64)
    return float(np.dot(np.asarray(counts, dtype=np.float64) / m, p) / p.sum())
