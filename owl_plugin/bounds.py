"""Keep allocated ratios inside user bounds without moving their weighted mean.

A published allocation formula can leave [0, 1): AlphaPruning at S=0.8, ε=0.3
maps the highest-α layer to 0.8·1.3/(weighted mean of r) ≈ 1.06. Clipping alone
would lower the mean, so we *project*: find the one shift t for which

    Σ_l p_l · clip(s_l + t, lo, hi) = S · Σ_l p_l

and return clip(s + t, lo, hi). The left side is continuous and non-decreasing
in t, so bisection finds t; the order of layers (who gets more sparsity) is kept.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np

logger = logging.getLogger(__name__)


class Bounded(NamedTuple):
    """Ratios after projection, and whether the projection changed anything."""

    ratios: np.ndarray
    projected: bool


def weighted_mean(ratios: np.ndarray, weights: np.ndarray) -> float:
    """Parameter-weighted mean Σ p·s / Σ p (float64)."""
    weights = np.asarray(weights, dtype=np.float64)
    return float(np.dot(np.asarray(ratios, dtype=np.float64), weights) / weights.sum())


def check_bounds(bounds: tuple[float, float]) -> tuple[float, float]:
    """Validate user bounds: 0 ≤ lo < hi < 1."""
    lo, hi = (float(b) for b in bounds)
    if not (0.0 <= lo < hi < 1.0):
        raise ValueError(f"bounds={bounds!r} are invalid: need 0 <= lower < upper < 1 (default (0.0, 0.99))")
    return lo, hi


def fit_to_bounds(
    ratios: np.ndarray,
    weights: np.ndarray,
    target: float,
    bounds: tuple[float, float] = (0.0, 0.99),
    *,
    what: str = "allocation",
) -> Bounded:
    """Project ``ratios`` into ``bounds`` keeping the ``weights``-weighted mean at ``target``.

    Args:
        ratios: per-unit sparsities from a formula (any real values).
        weights: per-unit parameter counts p_l (positive).
        target: the weighted mean S to hold, lo ≤ S ≤ hi.
        bounds: (lo, hi) allowed for every unit.
        what: name used in the warning.

    Returns:
        ``Bounded(ratios, projected)``; ``projected`` is True when a shift and
        clip were needed, in which case a warning is logged.
    """
    lo, hi = check_bounds(bounds)
    ratios = np.asarray(ratios, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if not (lo <= target <= hi):
        raise ValueError(f"target sparsity {target!r} is outside bounds [{lo}, {hi}]; no allocation can reach it")
    if np.all((ratios >= lo) & (ratios <= hi)):
        return Bounded(ratios, False)

    def mean_after(shift: float) -> float:
        return weighted_mean(np.clip(ratios + shift, lo, hi), weights)

    # mean_after(low) = lo <= target <= hi = mean_after(high)
    low, high = lo - ratios.max(), hi - ratios.min()
    for _ in range(200):
        mid = 0.5 * (low + high)
        if mean_after(mid) < target:
            low = mid
        else:
            high = mid
    fitted = np.clip(ratios + 0.5 * (low + high), lo, hi)
    logger.warning(
        "%s left the bounds [%g, %g] (min %.4f, max %.4f); projected back with the weighted mean held at %g",
        what, lo, hi, ratios.min(), ratios.max(), target,
    )
    return Bounded(fitted, True)
