"""DLP and ATP: formulas against hand-computed numbers, property tests, and the paths into a profile."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from owl_plugin.allocate import allocate
from owl_plugin.allocators import atp_ratios, dlp_ratios, median_score, wanda_scores
from owl_plugin.bounds import weighted_mean
from owl_plugin.config import ATPConfig, DLPConfig, make_config
from owl_plugin.layers import prunable_linears
from owl_plugin.statistics import collect_input_sq_means


# --------------------------------------------------------------------------- median_score
def test_median_score_pools_all_tensors_of_a_unit():
    a = torch.tensor([[4.0, 1.0], [7.0, 2.0]])
    b = torch.tensor([9.0, 3.0, 5.0])
    # pooled, sorted: 1 2 3 4 5 7 9 -> median 4 (a alone: lower median of 1 2 4 7 = 2; b alone: 5)
    assert median_score([a, b]) == 4.0
    assert median_score(iter([a, b])) == 4.0
    assert median_score([a]) == 2.0  # even count: the lower median, as torch.median
    with pytest.raises(ValueError, match="at least one"):
        median_score([])


# --------------------------------------------------------------------------- dlp_ratios
def test_dlp_ratios_docstring_example_highest_median_pruned_most():
    # U = [1, 2, 3], band 0.1: r = (U - 1) / 2 * 0.2 = [0, 0.1, 0.2], mean 0.1
    # s = 0.5 + (r - 0.1) = [0.4, 0.5, 0.6]
    result = dlp_ratios(np.array([1.0, 2.0, 3.0]), np.ones(3), 0.5, band=0.1)
    np.testing.assert_allclose(result.ratios, [0.4, 0.5, 0.6], rtol=0, atol=1e-12)
    assert result.projected is False


def test_dlp_ratios_unequal_params_weighted_centering():
    # U = [0.2, 0.6, 1.0], p = [2, 1, 1], band 0.05, S = 0.7
    # r = (U - 0.2) / 0.8 * 0.1 = [0, 0.05, 0.1]
    # weighted mean r = (2*0 + 0.05 + 0.1) / 4 = 0.0375
    # s = 0.7 + r - 0.0375 = [0.6625, 0.7125, 0.7625]; check (2*0.6625 + 0.7125 + 0.7625) / 4 = 0.7
    p = np.array([2, 1, 1])
    result = dlp_ratios(np.array([0.2, 0.6, 1.0]), p, 0.7, band=0.05)
    np.testing.assert_allclose(result.ratios, [0.6625, 0.7125, 0.7625], rtol=0, atol=1e-12)
    assert weighted_mean(result.ratios, p) == pytest.approx(0.7, abs=1e-12)


def test_dlp_ratios_equal_medians_is_uniform():
    np.testing.assert_array_equal(dlp_ratios(np.full(3, 0.3), np.array([1, 2, 3]), 0.6).ratios, np.full(3, 0.6))


def test_dlp_ratios_projects_into_bounds(caplog):
    # band 0.2 at S = 0.85 with bounds (0, 0.9): formula gives [0.65, 0.85, 1.05]; projection holds the mean
    with caplog.at_level(logging.WARNING, logger="owl_plugin.bounds"):
        result = dlp_ratios(np.array([1.0, 2.0, 3.0]), np.ones(3), 0.85, band=0.2, bounds=(0.0, 0.9))
    assert result.projected
    # shift t, clip at 0.9, mean 0.85 (sum 2.55). With only the last clipped: 0.9 + 1.5 + 2t = 2.55 gives
    # t = 0.075, but then 0.85 + t = 0.925 > 0.9, so the last two clip: 1.8 + 0.65 + t = 2.55 -> t = 0.1
    np.testing.assert_allclose(result.ratios, [0.75, 0.9, 0.9], rtol=0, atol=1e-9)
    assert weighted_mean(result.ratios, np.ones(3)) == pytest.approx(0.85, abs=1e-9)
    assert any("DLP (band=0.2)" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("band", [-0.01, 0.5, 0.7])
def test_dlp_ratios_rejects_bad_band(band):
    with pytest.raises(ValueError, match=f"band={band!r}"):
        dlp_ratios(np.array([1.0, 2.0]), np.ones(2), 0.5, band=band)


def test_dlp_ratios_rejects_nan_median():
    with pytest.raises(ValueError, match="nan"):
        dlp_ratios(np.array([1.0, float("nan")]), np.ones(2), 0.5)


# --------------------------------------------------------------------------- atp_ratios
def test_atp_ratios_docstring_example():
    # depths 0 1 2, beta 0.1, S 0.5: s_0 = 0.5 - 0.1 * 1 = 0.4 -> [0.4, 0.5, 0.6]
    result = atp_ratios(np.array([0, 1, 2]), np.ones(3), 0.5, beta=0.1)
    np.testing.assert_allclose(result.ratios, [0.4, 0.5, 0.6], rtol=0, atol=1e-12)


def test_atp_ratios_unequal_params_hand_computed():
    # depths 0 1 2 3, p = [1, 1, 1, 5], beta 0.02, S 0.6
    # weighted mean depth = (0 + 1 + 2 + 15) / 8 = 2.25 -> s_0 = 0.6 - 0.02 * 2.25 = 0.555
    # s = [0.555, 0.575, 0.595, 0.615]; check (0.555 + 0.575 + 0.595 + 5 * 0.615) / 8 = 4.8 / 8 = 0.6
    p = np.array([1, 1, 1, 5])
    result = atp_ratios(np.arange(4), p, 0.6, beta=0.02)
    np.testing.assert_allclose(result.ratios, [0.555, 0.575, 0.595, 0.615], rtol=0, atol=1e-12)
    assert weighted_mean(result.ratios, p) == pytest.approx(0.6, abs=1e-12)


def test_atp_negative_beta_falls_with_depth_and_zero_is_uniform():
    np.testing.assert_allclose(atp_ratios(np.arange(3), np.ones(3), 0.5, beta=-0.1).ratios, [0.6, 0.5, 0.4],
                               atol=1e-12)
    np.testing.assert_array_equal(atp_ratios(np.arange(5), np.ones(5), 0.7, beta=0.0).ratios, np.full(5, 0.7))


def test_atp_too_steep_is_projected_and_keeps_order():
    # 30 blocks, beta 0.02 at S = 0.8: s spans 0.51 .. 1.09 before projection
    result = atp_ratios(np.arange(30), np.ones(30), 0.8, beta=0.02)
    assert result.projected and result.ratios.max() <= 0.99
    assert weighted_mean(result.ratios, np.ones(30)) == pytest.approx(0.8, abs=1e-9)
    assert np.all(np.diff(result.ratios) >= 0)


@pytest.mark.parametrize("beta", [float("nan"), float("inf"), 1.0, -2.0, True])
def test_atp_rejects_bad_beta(beta):
    with pytest.raises(ValueError, match=f"beta={beta!r}"):
        atp_ratios(np.arange(3), np.ones(3), 0.5, beta=beta)


@pytest.mark.parametrize("target", [1.0, -0.1, float("nan")])
def test_dlp_and_atp_reject_bad_target(target):
    with pytest.raises(ValueError, match=f"target sparsity {target!r}"):
        dlp_ratios(np.array([1.0, 2.0]), np.ones(2), target)
    with pytest.raises(ValueError, match=f"target sparsity {target!r}"):
        atp_ratios(np.arange(2), np.ones(2), target)


# --------------------------------------------------------------------------- properties
PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def problems(draw):
    n = draw(st.integers(1, 40))
    params = np.array(draw(st.lists(st.integers(1, 10**8), min_size=n, max_size=n)), dtype=np.float64)
    target = draw(st.floats(0.0, 0.95))
    lo = draw(st.floats(0.0, target))
    hi = draw(st.floats(max(target, lo) + 1e-3, 0.999))
    return n, params, target, (lo, hi)


@PROPERTY
@given(problem=problems(), data=st.data())
def test_dlp_property(problem, data):
    n, params, target, bounds = problem
    medians = np.array(data.draw(st.lists(st.floats(0.0, 10.0), min_size=n, max_size=n)))
    band = data.draw(st.floats(0.0, (bounds[1] - bounds[0]) / 2))
    result = dlp_ratios(medians, params, target, band=band, bounds=bounds)
    assert np.all(result.ratios >= bounds[0] - 1e-12) and np.all(result.ratios <= bounds[1] + 1e-12)
    assert abs(weighted_mean(result.ratios, params) - target) <= 1e-6
    order = np.argsort(medians, kind="stable")  # higher median never gets less sparsity
    assert np.all(np.diff(result.ratios[order]) >= -1e-12)


@PROPERTY
@given(problem=problems(), data=st.data())
def test_atp_property(problem, data):
    n, params, target, bounds = problem
    beta = data.draw(st.floats(-(bounds[1] - bounds[0]) * 0.999, (bounds[1] - bounds[0]) * 0.999))
    result = atp_ratios(np.arange(n), params, target, beta=beta, bounds=bounds)
    assert np.all(result.ratios >= bounds[0] - 1e-12) and np.all(result.ratios <= bounds[1] + 1e-12)
    assert abs(weighted_mean(result.ratios, params) - target) <= 1e-6
    assert np.all(np.diff(result.ratios) * np.sign(beta) >= -1e-12)


# --------------------------------------------------------------------------- configs
@pytest.mark.parametrize("kwargs, bad", [
    ({"band": -0.1}, "band=-0.1"), ({"band": 0.6}, "band=0.6"), ({"granularity": "row"}, "granularity='row'"),
])
def test_dlp_config_validates(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        DLPConfig(**kwargs)


@pytest.mark.parametrize("kwargs, bad", [
    ({"beta": float("nan")}, "beta=nan"), ({"beta": 1.0}, "beta=1.0"), ({"bounds": (0.5, 0.4)}, "bounds"),
])
def test_atp_config_validates(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        ATPConfig(**kwargs)


def test_make_config_knows_dlp_and_atp():
    assert make_config("dlp", band=0.1) == DLPConfig(band=0.1)
    assert make_config("atp", beta=-0.01, bounds=[0.1, 0.9]) == ATPConfig(beta=-0.01, bounds=(0.1, 0.9))
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['lam'\] for method 'dlp'"):
        make_config("dlp", lam=0.1)


# --------------------------------------------------------------------------- allocate
def test_allocate_dlp_matches_independent_computation(tiny_model, tiny_batches):
    profile = allocate(tiny_model, 0.6, DLPConfig(band=0.1), calibration=tiny_batches, progress=False)
    means = collect_input_sq_means(tiny_model, tiny_batches, progress=False)
    blocks = prunable_linears(tiny_model)
    medians = []
    for linears in blocks.values():
        pooled = torch.cat([wanda_scores(m.weight, means[n]).reshape(-1) for n, m in linears.items()])
        medians.append(float(pooled.sort().values[(pooled.numel() - 1) // 2]))
    np.testing.assert_allclose(list(profile.scores.values()), medians, rtol=1e-6)
    block_ratios = np.array(list(profile.block_sparsities().values()))
    expected = dlp_ratios(np.array(medians), np.ones(len(medians)), 0.6, band=0.1).ratios  # equal blocks
    np.testing.assert_allclose(block_ratios, expected, atol=1e-9)
    assert block_ratios.max() - block_ratios.min() == pytest.approx(0.2, abs=1e-9)
    assert profile.mean_sparsity() == pytest.approx(0.6, abs=1e-9)
    assert profile.method == "dlp" and profile.params["band"] == 0.1


def test_allocate_dlp_needs_calibration(tiny_model):
    with pytest.raises(ValueError, match="DLP needs calibration data"):
        allocate(tiny_model, 0.5, DLPConfig())


@pytest.mark.parametrize("granularity", ["block", "linear"])
def test_allocate_atp_rises_by_beta_per_block(tiny_model, granularity):
    profile = allocate(tiny_model, 0.5, ATPConfig(beta=0.03, granularity=granularity), progress=False)
    blocks = list(profile.block_sparsities().values())
    np.testing.assert_allclose(blocks, [0.455, 0.485, 0.515, 0.545], atol=1e-12)
    assert len(set(profile.sparsities.values())) == 4  # every linear of a block shares its block's ratio
    assert profile.scores == {} and profile.mean_sparsity() == pytest.approx(0.5, abs=1e-12)


def test_allocate_dlp_rejects_non_finite_weight(tiny_model, tiny_batches):
    with torch.no_grad():
        tiny_model.model.layers[2].self_attn.k_proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"weight of 'model\.layers\.2\.self_attn\.k_proj' contains NaN"):
        allocate(tiny_model, 0.5, DLPConfig(), calibration=tiny_batches)
