"""Eigenvalue spectra and the Hill estimator of the power-law exponent α."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from owl_plugin.spectra import esd, fit_power_law, hill_alpha


def test_esd_is_squared_singular_values_of_a_known_matrix():
    # rows scaled copies of unit vectors: singular values 3, 1, 2 -> ESD [1, 4, 9]
    weight = torch.zeros(3, 5)
    weight[0, 1], weight[1, 3], weight[2, 0] = 3.0, -1.0, 2.0
    np.testing.assert_allclose(esd(weight), [1.0, 4.0, 9.0], rtol=0, atol=1e-12)


def test_esd_matches_eigenvalues_of_wtw():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(7, 4, generator=generator)
    eigs = esd(weight)
    assert eigs.dtype == np.float64 and eigs.shape == (4,)
    assert np.all(np.diff(eigs) >= 0)  # ascending
    w64 = weight.double()
    np.testing.assert_allclose(eigs, torch.linalg.eigvalsh(w64.T @ w64).numpy(), rtol=1e-10)
    np.testing.assert_allclose(eigs, np.sort(torch.linalg.svdvals(w64).numpy() ** 2), rtol=1e-12)


def test_esd_rejects_nan_and_wrong_rank():
    with pytest.raises(ValueError, match="NaN"):
        esd(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"\(2, 2, 2\)"):
        esd(torch.ones(2, 2, 2))


def test_hill_median_hand_computed_odd():
    eigs = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    # median rule: i = 5 // 2 = 2, tail [4, 8, 16], n = 3, lambda_min = 4
    # sum ln = (2 + 3 + 4) ln 2 = 9 ln 2; n ln lambda_min = 6 ln 2
    # alpha = 1 + 3 / (3 ln 2) = 1 + 1/ln 2 = 2.442695...
    fit = fit_power_law(eigs, xmin="median")
    assert fit.alpha == pytest.approx(1.0 + 1.0 / math.log(2.0), rel=1e-12)
    assert fit.xmin == 4.0 and fit.tail_size == 3
    # KS: tail / xmin = [1, 2, 4]; x^(1 - alpha) = x^(-1/ln 2) = e^(-log2 x) = [1, e^-1, e^-2]
    # |1 - x^(1-alpha) - k/3| = [0, 1 - 1/e - 1/3, 1 - 1/e^2 - 2/3] -> max = 2/3 - 1/e = 0.29879
    assert fit.ks_distance == pytest.approx(2.0 / 3.0 - math.exp(-1.0), rel=1e-12)


def test_hill_median_hand_computed_even():
    eigs = np.array([0.5, 1.0, math.e, math.e**2])
    # i = 4 // 2 = 2, tail [e, e^2], n = 2: sum ln = 1 + 2 = 3, n ln lambda_min = 2 -> alpha = 1 + 2/1 = 3
    fit = fit_power_law(eigs, xmin="median")
    assert fit.alpha == pytest.approx(3.0, rel=1e-12)
    assert fit.xmin == pytest.approx(math.e) and fit.tail_size == 2


@pytest.mark.parametrize("shape", [2.0, 3.0, 4.0])
def test_peak_rule_recovers_pareto_exponent(shape):
    # numpy's pareto(a) + 1 has density a * x^-(a+1) on [1, inf): true alpha = a + 1
    rng = np.random.default_rng(0)
    eigs = np.sort(rng.pareto(shape, 4000) + 1.0)
    fit = fit_power_law(eigs, xmin="peak")
    assert fit.alpha == pytest.approx(shape + 1.0, abs=0.2)
    assert fit.xmin < 1.2  # the tail starts at the Pareto scale
    assert 0 <= fit.ks_distance < 0.05


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="ascending"):
        fit_power_law(np.array([3.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="0.0"):
        fit_power_law(np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="at least two"):
        fit_power_law(np.array([1.0]))
    with pytest.raises(ValueError, match="'max'"):
        fit_power_law(np.array([1.0, 2.0, 3.0]), xmin="max")


@pytest.mark.parametrize("xmin", ["median", "peak"])
def test_fit_refuses_spectra_without_a_tail_or_with_numerical_zeros(xmin):
    """A flat spectrum (orthogonal W) has no tail: α was inf, or ~1e15 (which then flattened every other unit's
    ratio), or numpy's 'Too many bins'. A rank-deficient W has eigenvalues that are zero up to rounding (~1e-30),
    which the exact-zero check let through to α ≈ 1.03."""
    generator = torch.Generator().manual_seed(0)
    orthogonal = torch.linalg.qr(torch.randn(64, 64, dtype=torch.float64, generator=generator))[0]
    for weight in (torch.eye(8), 0.7 * orthogonal):
        with pytest.raises(ValueError, match="no power-law tail to fit"):
            fit_power_law(esd(weight), xmin=xmin)
    rank4 = torch.randn(16, 4, dtype=torch.float64, generator=generator) @ torch.randn(4, 16, dtype=torch.float64,
                                                                                       generator=generator)
    with pytest.raises(ValueError, match="rank-deficient"):
        fit_power_law(esd(rank4), xmin=xmin)


def test_hill_alpha_of_a_weight_equals_fit_of_its_spectrum():
    generator = torch.Generator().manual_seed(2)
    weight = torch.randn(48, 96, generator=generator) @ torch.diag(torch.linspace(0.1, 3.0, 96))
    assert hill_alpha(weight, xmin="median") == fit_power_law(esd(weight), xmin="median").alpha
    assert hill_alpha(weight) == fit_power_law(esd(weight), xmin="peak").alpha
