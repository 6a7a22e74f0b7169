"""OWL, AlphaPruning and uniform formulas against hand-computed numbers, plus property tests."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from owl_plugin.allocators import alpha_ratios, outlier_ratio, owl_ratios, uniform_ratios, wanda_scores
from owl_plugin.bounds import weighted_mean


# --------------------------------------------------------------------------- wanda_scores
def test_wanda_scores_2x3_hand_computed():
    weight = torch.tensor([[1.0, -2.0, 3.0], [-4.0, 5.0, -6.0]])
    input_sq_mean = torch.tensor([4.0, 1.0, 0.25])  # sqrt -> [2, 1, 0.5]
    # |W| * sqrt(E[x^2]) per column:
    #   row 0: [1*2, 2*1, 3*0.5] = [2, 2, 1.5]
    #   row 1: [4*2, 5*1, 6*0.5] = [8, 5, 3]
    expected = torch.tensor([[2.0, 2.0, 1.5], [8.0, 5.0, 3.0]])
    scores = wanda_scores(weight, input_sq_mean)
    assert scores.shape == (2, 3)
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-7)


def test_wanda_scores_rejects_mismatched_statistics():
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\)"):
        wanda_scores(torch.ones(2, 3), torch.ones(2))


# --------------------------------------------------------------------------- outlier_ratio
def test_outlier_ratio_one_of_ten():
    scores = torch.tensor([1.0] * 9 + [31.0])
    # mean = (9 + 31) / 10 = 4; M=5 -> threshold 20; only 31 > 20 -> 1/10 = 10 %
    assert outlier_ratio([scores], 5.0) == pytest.approx(10.0, abs=1e-12)
    # M=8 -> threshold 32 > 31 -> nothing is an outlier
    assert outlier_ratio([scores], 8.0) == 0.0
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match=f"M={bad!r} must be a finite number > 0"):
            outlier_ratio([scores], bad)


def test_outlier_ratio_pools_all_tensors_of_a_unit():
    a = torch.ones(2, 3)                      # six 1s
    b = torch.tensor([1.0, 1.0, 12.0, 12.0])  # two big entries
    # pooled: sum = 6 + 26 = 32, count = 10, mean = 3.2; M=3 -> threshold 9.6
    # entries above: 12, 12 -> 2/10 = 20 %   (per-tensor means would give a different answer:
    # b alone has mean 6.5, threshold 19.5 -> 0 %)
    assert outlier_ratio([a, b], 3.0) == pytest.approx(20.0, abs=1e-12)
    assert outlier_ratio(iter([a, b]), 3.0) == pytest.approx(20.0, abs=1e-12)  # a generator works too
    assert outlier_ratio([b], 3.0) == 0.0


def test_outlier_ratio_is_strictly_greater():
    scores = torch.tensor([1.0, 1.0, 1.0, 1.0, 6.0])
    # mean = 10 / 5 = 2; M=3 -> threshold 6; 6 is not > 6 -> 0 %
    assert outlier_ratio([scores], 3.0) == 0.0
    # M=2.9 -> threshold 5.8 -> one of five = 20 %
    assert outlier_ratio([scores], 2.9) == pytest.approx(20.0, abs=1e-12)


@pytest.mark.parametrize("m", [0.0, -1.5])
def test_outlier_ratio_rejects_non_positive_m(m):
    with pytest.raises(ValueError, match=f"M={m!r}"):
        outlier_ratio([torch.ones(3)], m)


def test_outlier_ratio_rejects_no_scores():
    with pytest.raises(ValueError, match="at least one"):
        outlier_ratio([], 5.0)


# --------------------------------------------------------------------------- owl_ratios
def test_owl_ratios_equal_params_docstring_example():
    # D = [1, 2, 3], lambda = 0.1: r = (D - 1) / 2 * 0.2 = [0, 0.1, 0.2], mean r = 0.1
    # s = 0.5 - (r - 0.1) = [0.6, 0.5, 0.4]
    result = owl_ratios(np.array([1.0, 2.0, 3.0]), np.ones(3), 0.5, lam=0.1)
    np.testing.assert_allclose(result.ratios, [0.6, 0.5, 0.4], rtol=0, atol=1e-12)
    assert result.projected is False


def test_owl_ratios_unequal_params_weighted_centering():
    # D = [0, 10, 20], p = [1, 1, 2], lambda = 0.05, S = 0.6
    # r = D / 20 * 0.1 = [0, 0.05, 0.1]
    # weighted mean of r = (1*0 + 1*0.05 + 2*0.1) / 4 = 0.25 / 4 = 0.0625
    # s = 0.6 - (r - 0.0625) = [0.6625, 0.6125, 0.5625]
    # check: (0.6625 + 0.6125 + 2*0.5625) / 4 = 2.4 / 4 = 0.6
    # (a plain mean, 0.05, would give [0.65, 0.6, 0.55] with weighted mean 0.5875)
    result = owl_ratios(np.array([0.0, 10.0, 20.0]), np.array([1, 1, 2]), 0.6, lam=0.05)
    np.testing.assert_allclose(result.ratios, [0.6625, 0.6125, 0.5625], rtol=0, atol=1e-12)
    assert weighted_mean(result.ratios, [1, 1, 2]) == pytest.approx(0.6, abs=1e-12)


def test_owl_ratios_span_is_two_lambda_and_more_outliers_means_less_sparsity():
    d = np.array([3.0, 0.5, 7.0, 1.0, 2.0])
    result = owl_ratios(d, np.arange(1, 6), 0.5, lam=0.08)
    assert result.ratios.max() - result.ratios.min() == pytest.approx(0.16, abs=1e-12)
    # ranks reversed: the unit with the most outliers gets the lowest sparsity
    assert list(np.argsort(result.ratios)) == list(np.argsort(-d))


def test_owl_ratios_all_equal_outliers_is_uniform():
    result = owl_ratios(np.full(4, 2.5), np.array([1, 2, 3, 4]), 0.7, lam=0.08)
    np.testing.assert_array_equal(result.ratios, np.full(4, 0.7))


@pytest.mark.parametrize("lam", [-0.1, 0.5, 0.6])
def test_owl_ratios_rejects_bad_lambda(lam):
    # default bounds (0, 0.99): lambda must be in [0, 0.495]
    with pytest.raises(ValueError, match=f"lambda={lam!r}"):
        owl_ratios(np.array([1.0, 2.0]), np.ones(2), 0.5, lam=lam)


def test_owl_ratios_rejects_nan_statistic():
    with pytest.raises(ValueError, match="nan"):
        owl_ratios(np.array([1.0, float("nan")]), np.ones(2), 0.5)


@pytest.mark.parametrize("target", [1.0, -0.1, float("nan")])
def test_allocators_reject_bad_target(target):
    for call in (
        lambda: owl_ratios(np.array([1.0, 2.0]), np.ones(2), target),
        lambda: alpha_ratios(np.array([2.0, 3.0]), np.ones(2), target),
        lambda: uniform_ratios(np.ones(2), target),
    ):
        with pytest.raises(ValueError, match=f"target sparsity {target!r}"):
            call()


# --------------------------------------------------------------------------- alpha_ratios
def test_alpha_ratios_docstring_example():
    # alphas [2, 3, 4], eps 0.2 -> r = [0.8, 1.0, 1.2], mean 1 -> s = 0.5 * r = [0.4, 0.5, 0.6]
    result = alpha_ratios(np.array([2.0, 3.0, 4.0]), np.ones(3), 0.5, epsilon=0.2)
    np.testing.assert_allclose(result.ratios, [0.4, 0.5, 0.6], rtol=0, atol=1e-12)


def test_alpha_ratios_unequal_params_hand_computed():
    # alphas [2, 4, 6], p = [3, 1, 1], eps = 0.2, S = 0.5
    # r = (a - 2) / 4 * 0.4 + 0.8 = [0.8, 1.0, 1.2]
    # sum p = 5, sum p*r = 2.4 + 1.0 + 1.2 = 4.6
    # s = r * 0.5 * 5 / 4.6 = r * 25/46 = [20/46, 25/46, 30/46]
    # check: (3*20 + 25 + 30) / 46 / 5 = 115 / 230 = 0.5
    alphas, p = np.array([2.0, 4.0, 6.0]), np.array([3, 1, 1])
    result = alpha_ratios(alphas, p, 0.5, epsilon=0.2)
    np.testing.assert_allclose(result.ratios, [20 / 46, 25 / 46, 30 / 46], rtol=0, atol=1e-12)
    r = np.array([0.8, 1.0, 1.2])
    np.testing.assert_allclose(result.ratios, r * 0.5 * p.sum() / np.dot(p, r), rtol=0, atol=1e-12)
    assert weighted_mean(result.ratios, p) == pytest.approx(0.5, abs=1e-12)
    assert result.projected is False


def test_alpha_ratios_order_follows_alpha():
    alphas = np.array([5.1, 2.2, 3.9, 2.8])
    result = alpha_ratios(alphas, np.array([4, 1, 2, 3]), 0.6, epsilon=0.25)
    assert list(np.argsort(result.ratios)) == list(np.argsort(alphas))  # heavier tail (lower α) -> pruned less


def test_alpha_ratios_equal_alphas_is_uniform():
    result = alpha_ratios(np.full(3, 3.3), np.array([1, 5, 9]), 0.45)
    np.testing.assert_allclose(result.ratios, 0.45, rtol=0, atol=1e-15)


def test_alpha_out_of_bounds_example_is_projected(caplog):
    """AlphaPruning at S=0.8, eps=0.3 leaves [0, 0.99]; projection must hold the mean and the order.

    alphas [2, 3, 4, 5, 6], equal params: r = [0.7, 0.85, 1.0, 1.15, 1.3] (mean 1), so the
    formula gives 0.8 * r = [0.56, 0.68, 0.80, 0.92, 1.04] -- the top unit is at 1.04 > 0.99.
    (A set of alphas with mean r below 1 pushes it higher, e.g. to ~1.06 for mean r ~0.98.)
    Projection: clip(s + t, 0, 0.99) with mean 0.8. With only the top unit clipped:
        (0.56 + 0.68 + 0.80 + 0.92 + 4t) + 0.99 = 5 * 0.8 = 4.0  ->  4t = 0.05  ->  t = 0.0125
    and indeed 0.92 + 0.0125 < 0.99 < 1.04 + 0.0125, giving
        [0.5725, 0.6925, 0.8125, 0.9325, 0.99].
    """
    alphas, p = np.array([2.0, 3.0, 4.0, 5.0, 6.0]), np.ones(5)
    # the formula before projection (r * S * sum p / sum p r)
    r = (alphas - 2.0) / 4.0 * 0.6 + 0.7
    raw = r * 0.8 * p.sum() / np.dot(p, r)
    np.testing.assert_allclose(raw, [0.56, 0.68, 0.80, 0.92, 1.04], rtol=0, atol=1e-12)
    assert raw.max() > 0.99

    with caplog.at_level(logging.WARNING, logger="owl_plugin.bounds"):
        result = alpha_ratios(alphas, p, 0.8, epsilon=0.3)
    assert result.projected is True
    np.testing.assert_allclose(result.ratios, [0.5725, 0.6925, 0.8125, 0.9325, 0.99], rtol=0, atol=1e-9)
    assert np.all((result.ratios >= 0.0) & (result.ratios <= 0.99))
    assert weighted_mean(result.ratios, p) == pytest.approx(0.8, abs=1e-9)
    assert list(np.argsort(result.ratios, kind="stable")) == list(range(5))  # order of units kept
    warnings = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
    assert warnings and "epsilon=0.3" in warnings[0].getMessage() and "1.04" in warnings[0].getMessage()


def test_alpha_out_of_bounds_unequal_params():
    # skewed alphas, unequal params: top unit goes far above 0.99 before projection
    alphas, p = np.array([2.0, 2.1, 2.2, 6.0]), np.array([10.0, 20.0, 30.0, 40.0])
    result = alpha_ratios(alphas, p, 0.8, epsilon=0.3)
    assert result.projected
    assert result.ratios.max() <= 0.99 and result.ratios.min() >= 0.0
    assert weighted_mean(result.ratios, p) == pytest.approx(0.8, abs=1e-9)
    assert np.all(np.diff(result.ratios) >= 0)


@pytest.mark.parametrize("epsilon", [-0.1, 1.0, 1.5])
def test_alpha_ratios_rejects_bad_epsilon(epsilon):
    with pytest.raises(ValueError, match=f"epsilon={epsilon!r}"):
        alpha_ratios(np.array([2.0, 3.0]), np.ones(2), 0.5, epsilon=epsilon)


def test_alpha_ratios_rejects_inf_alpha():
    with pytest.raises(ValueError, match="inf"):
        alpha_ratios(np.array([2.0, math.inf]), np.ones(2), 0.5)


def test_uniform_ratios():
    result = uniform_ratios(np.array([3, 1, 4, 1, 5]), 0.55)
    np.testing.assert_array_equal(result.ratios, np.full(5, 0.55))
    assert result.projected is False


# --------------------------------------------------------------------------- properties
@st.composite
def allocation_problems(draw):
    n = draw(st.integers(1, 60))
    params = np.array(draw(st.lists(st.integers(1, 10**8), min_size=n, max_size=n)), dtype=np.float64)
    target = draw(st.floats(0.0, 0.95))
    if draw(st.booleans()):
        bounds = (0.0, 0.99)
    else:
        lo = draw(st.floats(0.0, target))
        hi = draw(st.floats(max(target, lo) + 1e-3, 0.999))
        bounds = (lo, hi)
    return n, params, target, bounds


def _check(result, params, target, bounds):
    lo, hi = bounds
    assert result.ratios.shape == params.shape
    assert np.all(np.isfinite(result.ratios))
    assert np.all(result.ratios >= lo - 1e-12) and np.all(result.ratios <= hi + 1e-12)
    assert abs(weighted_mean(result.ratios, params) - target) <= 1e-6


PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(problem=allocation_problems(), data=st.data())
def test_owl_ratios_property(problem, data):
    n, params, target, bounds = problem
    d = np.array(data.draw(st.lists(st.floats(0.0, 100.0), min_size=n, max_size=n)))
    lam = data.draw(st.floats(0.0, (bounds[1] - bounds[0]) / 2))
    result = owl_ratios(d, params, target, lam=lam, bounds=bounds)
    _check(result, params, target, bounds)
    # order preserved (ties aside): more outliers never gets more sparsity
    order = np.argsort(d, kind="stable")
    assert np.all(np.diff(result.ratios[order]) <= 1e-12)


@PROPERTY
@given(problem=allocation_problems(), data=st.data())
def test_alpha_ratios_property(problem, data):
    n, params, target, bounds = problem
    alphas = np.array(data.draw(st.lists(st.floats(1.01, 20.0), min_size=n, max_size=n)))
    epsilon = data.draw(st.floats(0.0, 0.999))
    result = alpha_ratios(alphas, params, target, epsilon=epsilon, bounds=bounds)
    _check(result, params, target, bounds)
    order = np.argsort(alphas, kind="stable")
    assert np.all(np.diff(result.ratios[order]) >= -1e-12)


@PROPERTY
@given(problem=allocation_problems())
def test_uniform_ratios_property(problem):
    n, params, target, bounds = problem
    result = uniform_ratios(params, target, bounds=bounds)
    _check(result, params, target, bounds)
    assert np.all(result.ratios == target)
