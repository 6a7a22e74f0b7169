"""ATP: layer-wise sparsity as an arithmetic progression (Huang et al., ICML 2025, arXiv 2502.14770).

Pruning errors of early blocks are amplified by every later block ("reconstruction error
explosion", ATP §3), so ATP prunes early blocks less and late blocks more, with sparsity
growing linearly in depth; one common difference β is the only hyperparameter:

    s_l = s_0 + l · β,    l = 0, …, L − 1 (the unit's decoder-block index)
    s_0 = S − β · Σ_l p_l · l / Σ_l p_l

so the parameter-weighted mean is exactly S (for equal blocks s_0 = S − β(L − 1)/2).
β > 0 is the paper's increasing progression; β < 0 (decreasing) is allowed for search.
A progression too steep for the bounds is projected back (mean held, order kept).
"""

from __future__ import annotations

import math

import numpy as np

from owl_plugin.bounds import Bounded, fit_to_bounds, weighted_mean


def atp_ratios(
    depths: np.ndarray,
    num_params: np.ndarray,
    target: float,
    *,
    beta: float = 0.005,
    bounds: tuple[float, float] = (0.0, 0.99),
) -> Bounded:
    """Sparsity s_l = s_0 + depth_l · β with parameter-weighted mean S (ATP, module docstring).

    Args:
        depths: l, the decoder-block index of each unit (0 for the first block).
        num_params: parameter count of each unit (weights of the mean).
        target: S, the parameter-weighted mean sparsity to keep.
        beta: β, the common difference per block (default 0.005).
        bounds: allowed range of every ratio; a formula result outside is projected back.

    Example:
        >>> atp_ratios(np.array([0, 1, 2]), np.ones(3), 0.5, beta=0.1).ratios
        array([0.4, 0.5, 0.6])
    """
    depth = np.asarray(depths, dtype=np.float64)
    p = np.asarray(num_params, dtype=np.float64)
    lo, hi = bounds
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or abs(beta) >= hi - lo:
        raise ValueError(
            f"ATP beta={beta!r} is out of range: need a finite step with |beta| < upper - lower = {hi - lo:g} "
            "(typical 0.001-0.02 per block)"
        )
    if not np.all(np.isfinite(depth)) or np.any(depth < 0):
        raise ValueError(f"ATP depths must be finite block indices >= 0, got {depth.tolist()}")
    ratios = target + beta * (depth - weighted_mean(depth, p))
    return fit_to_bounds(ratios, p, target, bounds, what=f"ATP (beta={beta})")
