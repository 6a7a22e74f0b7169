"""AlphaPruning allocation (Lu et al., NeurIPS 2024, arXiv 2410.10912, §3.2, Eq. 3).

A unit with a lower heavy-tail exponent α (see ``owl_plugin.spectra``) is better trained
and is pruned less. As in the reference ``ww_sparsity``:

    r_l = (α_l − min α) / (max α − min α) · (s2 − s1) + s1,   s1 = 1 − ε, s2 = 1 + ε
    s_l = r_l · S · Σ_k p_k / Σ_k p_k r_k

so the parameter-weighted mean of s is exactly S and the ratios span
[S(1−ε), S(1+ε)] up to that common scale factor.
"""

from __future__ import annotations

import numpy as np

from owl_plugin.bounds import Bounded, fit_to_bounds


def alpha_ratios(
    alphas: np.ndarray,
    num_params: np.ndarray,
    target: float,
    *,
    epsilon: float = 0.2,
    bounds: tuple[float, float] = (0.0, 0.99),
) -> Bounded:
    """Map per-unit α to sparsities (AlphaPruning Eq. 3).

    Args:
        alphas: α_l, one per unit (block mean of its linears, or one linear).
        num_params: p_l, the parameter count of each unit.
        target: S, the parameter-weighted mean sparsity to keep.
        epsilon: ε in [0, 1); ratios span S(1 ± ε) before re-scaling (reference default 0.3,
            this plugin's default 0.2).
        bounds: allowed range of every ratio; a formula result outside is projected back.

    Returns:
        ``Bounded(ratios, projected)``. When all α are equal every unit gets S.

    Example:
        >>> alpha_ratios(np.array([2.0, 3.0, 4.0]), np.ones(3), 0.5, epsilon=0.2).ratios
        array([0.4, 0.5, 0.6])
    """
    a = np.asarray(alphas, dtype=np.float64)
    p = np.asarray(num_params, dtype=np.float64)
    if not (0.0 <= epsilon < 1.0):
        raise ValueError(f"AlphaPruning epsilon={epsilon!r} is out of range: need 0 <= epsilon < 1 (paper: 0.2-0.3)")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"alpha values contain NaN or inf: {a.tolist()}")
    spread = a.max() - a.min()
    low, high = 1.0 - epsilon, 1.0 + epsilon
    r = np.ones_like(a) if spread == 0 else (a - a.min()) / spread * (high - low) + low
    ratios = r * target * p.sum() / np.dot(p, r)
    return fit_to_bounds(ratios, p, target, bounds, what=f"AlphaPruning (epsilon={epsilon})")
