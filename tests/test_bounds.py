"""Mean-preserving projection into the bounds, and bounds validation."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from owl_plugin.bounds import check_bounds, fit_to_bounds, weighted_mean


def test_weighted_mean_hand_computed():
    # (0.2*1 + 0.5*3) / 4 = 1.7 / 4 = 0.425
    assert weighted_mean(np.array([0.2, 0.5]), np.array([1, 3])) == pytest.approx(0.425, abs=1e-15)


@pytest.mark.parametrize("bounds", [(0.5, 0.4), (0.3, 0.3), (-0.1, 0.5), (0.1, 1.0), (0.0, 1.2)])
def test_check_bounds_rejects_invalid(bounds):
    with pytest.raises(ValueError, match=repr(bounds).replace("(", r"\(").replace(")", r"\)")):
        check_bounds(bounds)


def test_check_bounds_accepts_and_converts():
    assert check_bounds([0, 0.5]) == (0.0, 0.5)


def test_inside_bounds_is_unchanged_and_silent(caplog):
    ratios = np.array([0.1, 0.5, 0.9])
    with caplog.at_level(logging.WARNING):
        result = fit_to_bounds(ratios, np.ones(3), 0.5)
    np.testing.assert_array_equal(result.ratios, ratios)
    assert result.projected is False
    assert not caplog.records


def test_projection_hand_computed(caplog):
    # s = [-0.2, 0.4, 0.7], p = [1, 1, 2], S = 0.4, bounds [0, 0.6] (weighted mean of s is 0.4 already)
    # shift t with clip(s + t, 0, 0.6): guess unit 0 clipped at 0, unit 2 clipped at 0.6:
    #   (0 + (0.4 + t) + 2 * 0.6) / 4 = 0.4  ->  0.4 + t + 1.2 = 1.6  ->  t = 0
    # consistent: -0.2 + 0 < 0 and 0.7 + 0 > 0.6 -> ratios [0, 0.4, 0.6]
    with caplog.at_level(logging.WARNING, logger="owl_plugin.bounds"):
        result = fit_to_bounds(np.array([-0.2, 0.4, 0.7]), np.array([1, 1, 2]), 0.4, (0.0, 0.6), what="test-unit")
    np.testing.assert_allclose(result.ratios, [0.0, 0.4, 0.6], rtol=0, atol=1e-12)
    assert result.projected is True
    assert "test-unit" in caplog.text


def test_projection_with_shift():
    # s = [0.5, 0.7, 1.2], equal p, S = 0.8, bounds [0, 0.99]: only the top is clipped:
    #   (0.5 + t) + (0.7 + t) + 0.99 = 2.4  ->  2t = 0.21  ->  t = 0.105 -> [0.605, 0.805, 0.99]
    result = fit_to_bounds(np.array([0.5, 0.7, 1.2]), np.ones(3), 0.8)
    np.testing.assert_allclose(result.ratios, [0.605, 0.805, 0.99], rtol=0, atol=1e-12)


@pytest.mark.parametrize("target", [0.995, -0.01, float("nan")])
def test_target_outside_bounds_is_rejected(target):
    with pytest.raises(ValueError, match=f"target sparsity {target!r}"):
        fit_to_bounds(np.array([0.5]), np.ones(1), target)


def test_target_at_the_upper_bound():
    result = fit_to_bounds(np.array([0.5, 1.5]), np.array([1, 1]), 0.99)
    np.testing.assert_allclose(result.ratios, [0.99, 0.99], rtol=0, atol=1e-9)


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 60),
    target=st.floats(0.0, 0.95),
)
def test_projection_property(data, n, target):
    ratios = np.array(data.draw(st.lists(st.floats(-3.0, 3.0), min_size=n, max_size=n)))
    weights = np.array(data.draw(st.lists(st.floats(1e-3, 1e6), min_size=n, max_size=n)))
    result = fit_to_bounds(ratios, weights, target)
    if result.projected:
        assert abs(weighted_mean(result.ratios, weights) - target) <= 1e-6
        # a common shift then a clip: order is kept
        order = np.argsort(ratios, kind="stable")
        assert np.all(np.diff(result.ratios[order]) >= -1e-12)
    else:
        np.testing.assert_array_equal(result.ratios, ratios)
    assert np.all((result.ratios >= 0.0) & (result.ratios <= 0.99))
