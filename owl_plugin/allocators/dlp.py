"""DLP: Dynamic Layerwise Pruning (Chen et al., ICML 2025, arXiv 2505.23807).

DLP measures a unit's (decoder block's, or one linear's) *unimportance* by the median of its
Wanda scores, which, unlike OWL's outlier count, has no threshold to pick: a unit whose typical
score is large carries its information spread over many weights and tolerates more pruning,
while the important structure of a low-median unit sits in few large scores. So a higher
median means more sparsity:

1. Wanda score of weight W_ij (as in OWL, see ``owl_plugin.allocators.owl``):
       A_ij = |W_ij| · ‖X_j‖,  ‖X_j‖ = sqrt(mean_t x_tj²)
2. Absolute unimportance of unit l (DLP §3.2): the median of all its scores pooled together,
       U_l = median(A)   (the lower median for an even count, as ``torch.median``)
   DLP turns it into a relative importance, a decreasing affine function of U_l; after the
   min-max map below any such form gives the same ratios.
3. Allocation into the same band as OWL (DLP §3.3, with the band half-width as hyperparameter):
       r_l = (U_l − min U) / (max U − min U) · 2·band
       s_l = S + (r_l − mean_p r)
   so the ratios span exactly 2·band, the highest-median (least important) unit gets the
   most sparsity, and the parameter-weighted mean is S. Results outside the bounds are
   projected back. On SmolLM2-135M the median rises with depth, so DLP, like AlphaPruning
   and ATP, prunes deep blocks more.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from owl_plugin.bounds import Bounded, fit_to_bounds, weighted_mean


def median_score(scores: Iterable[torch.Tensor]) -> float:
    """Lower median of all entries of ``scores`` taken together (one unit's Wanda scores).

    Example:
        >>> median_score([torch.tensor([4.0, 1.0]), torch.tensor([[3.0, 2.0, 9.0]])])
        3.0
    """
    flat = [s.detach().reshape(-1).float() for s in scores]
    if not flat:
        raise ValueError("median_score needs at least one score tensor")
    return float(torch.cat(flat).median())


def dlp_ratios(
    medians: np.ndarray,
    num_params: np.ndarray,
    target: float,
    *,
    band: float = 0.08,
    bounds: tuple[float, float] = (0.0, 0.99),
) -> Bounded:
    """Map per-unit median Wanda scores U to sparsities (DLP, see the module docstring).

    Args:
        medians: U_l, the median Wanda score of each unit (higher = less important, pruned more).
        num_params: parameter count of each unit (weights of the mean).
        target: S, the parameter-weighted mean sparsity to keep.
        band: half-width of the band; ratios span 2·band (default 0.08, OWL's λ).
        bounds: allowed range of every ratio; a formula result outside is projected back.

    Returns:
        ``Bounded(ratios, projected)``. When all medians are equal every unit gets S.

    Example:
        >>> dlp_ratios(np.array([1.0, 2.0, 3.0]), np.ones(3), 0.5, band=0.1).ratios
        array([0.4, 0.5, 0.6])
    """
    med = np.asarray(medians, dtype=np.float64)
    p = np.asarray(num_params, dtype=np.float64)
    lo, hi = bounds
    if not (0 <= band <= (hi - lo) / 2):
        raise ValueError(
            f"DLP band={band!r} is out of range: need 0 <= band <= (upper - lower) / 2 = {(hi - lo) / 2:g} "
            "so that the 2*band spread fits the bounds (e.g. 0.08)"
        )
    if not np.all(np.isfinite(med)):
        raise ValueError(f"median Wanda scores contain NaN or inf: {med.tolist()}")
    spread = med.max() - med.min()
    r = np.zeros_like(med) if spread == 0 else (med - med.min()) / spread * 2.0 * band
    ratios = target + (r - weighted_mean(r, p))
    return fit_to_bounds(ratios, p, target, bounds, what=f"DLP (band={band})")
