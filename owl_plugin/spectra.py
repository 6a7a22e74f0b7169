"""Heavy-tailed self-regularisation: the power-law exponent α of a weight's spectrum.

AlphaPruning (Lu et al., NeurIPS 2024, arXiv 2410.10912, §3 and Eq. 2) fits a power law
p(λ) ∝ λ^(−α) to the tail λ ≥ λ_min of the empirical spectral density (ESD): the
eigenvalues of the correlation matrix WᵀW, i.e. the squared singular values of W.
The Hill / maximum-likelihood estimator over the n eigenvalues λ_i ≥ λ_min is

    α = 1 + n / (Σ_i ln λ_i − n · ln λ_min)          (Eq. 2)

λ_min (xmin) is chosen as in the reference ``net_esd_estimator`` (haiquanlu/AlphaPruning):

* ``"peak"`` (``xmin_peak``, the paper's default): every eigenvalue up to 1.5 × the left
  edge of the fullest bin of a 100-bin histogram of log10 λ is a candidate; the one whose
  fit has the smallest Kolmogorov–Smirnov distance
      D = max_k | 1 − (λ_k / λ_min)^(1−α) − k/n |
  wins. (The reference also skips candidates below log10(0.95 · peak), comparing a
  linear eigenvalue against a logarithm; we keep that quirk so α matches the reference.)
* ``"median"`` (``xmin_mid``): λ_min is the middle eigenvalue, no search.

Everything runs in float64.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np
import torch

XminRule = Literal["peak", "median"]
XMIN_RULES: tuple[str, ...] = ("peak", "median")


class PowerLawFit(NamedTuple):
    """α, the chosen λ_min, its KS distance, and the number of tail eigenvalues."""

    alpha: float
    xmin: float
    ks_distance: float
    tail_size: int


def esd(weight: torch.Tensor) -> np.ndarray:
    """Eigenvalues of WᵀW (squared singular values of W), ascending, in float64."""
    if weight.ndim != 2:
        raise ValueError(f"esd expects a 2-D weight matrix, got shape {tuple(weight.shape)}")
    matrix = weight.detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(matrix).all():
        raise ValueError("weight matrix contains NaN or inf; its spectrum is undefined")
    return np.sort(torch.linalg.svdvals(matrix).square().numpy())


def _hill(log_eigs: np.ndarray, i: int) -> float:
    """α = 1 + n / Σ_{j≥i} ln(λ_j / λ_i) over the n = N − i eigenvalues from λ_i; inf for a flat tail (the sum is
    zero up to rounding: no power law, and a finite but huge α would flatten every other unit's ratio)."""
    n = log_eigs.size - i
    spread = log_eigs[i:].sum() - n * log_eigs[i]
    if not spread > n * 1e-12 * max(1.0, float(np.abs(log_eigs[i:]).max())):
        return float("inf")
    return 1.0 + n / spread


def _ks_distance(eigs: np.ndarray, i: int, alpha: float) -> float:
    tail = eigs[i:]
    n = tail.size
    return float(np.max(np.abs(1.0 - (tail / eigs[i]) ** (1.0 - alpha) - np.arange(n) / n)))


def fit_power_law(eigs: np.ndarray, *, xmin: XminRule = "peak", bins: int = 100) -> PowerLawFit:
    """Fit α to ascending eigenvalues ``eigs`` with the reference's λ_min rule.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> eigs = np.sort(rng.pareto(3.0, 2000) + 1.0)   # density ∝ λ^-4 above 1
        >>> round(fit_power_law(eigs).alpha)
        4
    """
    eigs = np.asarray(eigs, dtype=np.float64)
    if eigs.ndim != 1 or eigs.size < 2:
        raise ValueError(f"need at least two eigenvalues, got shape {eigs.shape}")
    if not np.all(eigs[:-1] <= eigs[1:]):
        raise ValueError("eigenvalues must be sorted ascending")
    if eigs[0] <= eigs[-1] * eigs.size * np.finfo(np.float64).eps:  # zero up to the SVD's rounding
        raise ValueError(
            f"smallest eigenvalue is {float(eigs[0])!r} (largest {float(eigs[-1])!r}); the Hill estimator needs "
            "positive eigenvalues (a rank-deficient matrix, e.g. an already pruned one, cannot be fitted)"
        )
    if xmin not in XMIN_RULES:
        raise ValueError(f"xmin={xmin!r} is not a known rule; choose one of {XMIN_RULES}")
    log_eigs = np.log(eigs)
    if xmin == "median":
        i = eigs.size // 2
        alpha = _hill(log_eigs, i)
        if not np.isfinite(alpha):
            raise ValueError(f"the eigenvalues from the median {float(eigs[i])!r} up are all equal (up to "
                             "rounding): no power-law tail to fit (an orthogonal or scaled-identity matrix?)")
        return PowerLawFit(float(alpha), float(eigs[i]), _ks_distance(eigs, i, alpha), eigs.size - i)

    log10_eigs = np.log10(eigs)
    if np.ptp(log10_eigs) <= 1e-9:
        raise ValueError(f"all eigenvalues equal {float(eigs[0])!r} (up to rounding): no power-law tail to fit (an "
                         "orthogonal or scaled-identity matrix?)")
    counts, edges = np.histogram(log10_eigs, bins=bins, range=(log10_eigs.min(), log10_eigs.max()))
    peak = 10.0 ** edges[int(np.argmax(counts))]
    lower, upper = np.log10(0.95 * peak), 1.5 * peak  # the reference's (quirky) window
    best = PowerLawFit(0.0, float(eigs[0]), 1.0, eigs.size)  # the reference's "no fit" default
    for i in range(eigs.size - 1):
        if eigs[i] < lower:
            continue
        if eigs[i] > upper:
            break
        alpha = _hill(log_eigs, i)
        if not 1 < alpha < np.inf:
            continue
        distance = _ks_distance(eigs, i, alpha)
        if distance < best.ks_distance:
            best = PowerLawFit(float(alpha), float(eigs[i]), distance, eigs.size - i)
    if best.alpha == 0.0:
        raise ValueError("no eigenvalue in the xmin search window gave a power-law fit (alpha > 1)")
    return best


def hill_alpha(weight: torch.Tensor, *, xmin: XminRule = "peak") -> float:
    """α of a weight matrix: ``fit_power_law(esd(weight))``."""
    return fit_power_law(esd(weight), xmin=xmin).alpha
