"""OWL: Outlier-Weighed Layerwise sparsity (Yin et al., ICML 2024, arXiv 2310.05175).

Layers with more *outliers* in their Wanda scores keep more weights.

1. Wanda score of weight W_ij (§3, Eq. 1 of Wanda, used by OWL §4):
       A_ij = |W_ij| · ‖X_j‖,  ‖X_j‖ = sqrt(mean_t x_tj²)
   Wanda's norm is the sum form sqrt(Σ_t x_tj²) = √T · ours; a factor shared by all scores of a
   unit cancels in step 2, so for dense blocks (every linear sees the same T tokens) the two agree.
   MoE experts see different token counts T_e: the mean form keeps an expert's scores from growing
   with √T_e (how often it was routed) when its block's experts are pooled into one unit. That is
   our choice for MoE; the papers study dense models.
2. Layer-wise Outlier Distribution (OWL §4.1, "LOD"): the share, in percent, of all
   scores of a unit (all linears of a decoder block, or one linear) above M × their mean:
       D_l = 100 · #{A_ij > M · mean(A)} / #A
3. Allocation (OWL §4.2, as in the reference code ``prune_wanda_outlier``):
       r_l = (D_l − min D) / (max D − min D) · 2λ
       s_l = S − (r_l − mean r)
   so the ratios span exactly 2λ (max − min) and their mean is S.
   The reference takes a plain mean over blocks (all blocks are the same size); we take the
   parameter-weighted mean, identical for equal blocks and exact for per-linear units.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch

from owl_plugin.bounds import Bounded, fit_to_bounds, weighted_mean


def wanda_scores(weight: torch.Tensor, input_sq_mean: torch.Tensor) -> torch.Tensor:
    """Wanda importance |W| · sqrt(E[x²]) broadcast over the output rows.

    Args:
        weight: (out_features, in_features) linear weight.
        input_sq_mean: (in_features,) mean over calibration tokens of x_j².
    """
    if input_sq_mean.shape != (weight.shape[1],):
        raise ValueError(
            f"input_sq_mean has shape {tuple(input_sq_mean.shape)}, expected ({weight.shape[1]},) "
            f"to match weight {tuple(weight.shape)}"
        )
    return weight.detach().abs().float() * input_sq_mean.detach().float().sqrt().unsqueeze(0)


def outlier_ratio(scores: Iterable[torch.Tensor], m: float) -> float:
    """Percentage of all entries of ``scores`` (taken together) greater than ``m`` × their mean.

    Streams over the tensors (two passes) instead of concatenating them, so a decoder
    block's scores never need to be held twice.
    """
    scores = list(scores)
    if not scores:
        raise ValueError("outlier_ratio needs at least one score tensor")
    if not (math.isfinite(m) and m > 0):
        raise ValueError(f"M={m!r} must be a finite number > 0 (OWL uses M=5)")
    total = sum(float(s.double().sum()) for s in scores)
    count = sum(s.numel() for s in scores)
    threshold = m * total / count
    above = sum(int((s > threshold).sum()) for s in scores)
    return 100.0 * above / count


def owl_ratios(
    outlier_ratios: np.ndarray,
    num_params: np.ndarray,
    target: float,
    *,
    lam: float = 0.08,
    bounds: tuple[float, float] = (0.0, 0.99),
) -> Bounded:
    """Map per-unit outlier ratios D to sparsities (OWL §4.2).

    Args:
        outlier_ratios: D_l, one per unit (block or linear), in percent.
        num_params: parameter count of each unit (weights of the mean).
        target: S, the parameter-weighted mean sparsity to keep.
        lam: λ; ratios span 2λ (OWL uses 0.08).
        bounds: allowed range of every ratio; a formula result outside is projected back.

    Returns:
        ``Bounded(ratios, projected)``. When all D are equal the min-max map is
        undefined and every unit gets S (OWL's allocation degenerates to uniform).

    Example:
        >>> owl_ratios(np.array([1.0, 2.0, 3.0]), np.ones(3), 0.5, lam=0.1).ratios
        array([0.6, 0.5, 0.4])
    """
    d = np.asarray(outlier_ratios, dtype=np.float64)
    p = np.asarray(num_params, dtype=np.float64)
    lo, hi = bounds
    if not (0 <= lam and 2 * lam <= hi - lo):
        raise ValueError(
            f"OWL lambda={lam!r} is out of range: need 0 <= lambda <= (upper - lower) / 2 = {(hi - lo) / 2:g} "
            "so that the 2*lambda band fits the bounds (the paper uses 0.08)"
        )
    if not np.all(np.isfinite(d)):
        raise ValueError(f"outlier ratios contain NaN or inf: {d.tolist()}")
    spread = d.max() - d.min()
    r = np.zeros_like(d) if spread == 0 else (d - d.min()) / spread * 2.0 * lam
    ratios = target - (r - weighted_mean(r, p))
    return fit_to_bounds(ratios, p, target, bounds, what=f"OWL (lambda={lam})")
