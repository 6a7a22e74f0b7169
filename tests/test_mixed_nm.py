"""Mixed N:M (OWL's structured variant): parsing and the per-unit N formula, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from owl_plugin.allocators import owl_ratios
from owl_plugin.allocators.mixed_nm import MaskStructure, achieved_mean, mixed_nm_counts, parse_mask_structure


@pytest.mark.parametrize("text, n, m, ratio", [("2:4", 2, 4, 0.5), (" 4 : 8 ", 4, 8, 0.5), ("3:4", 3, 4, 0.75),
                                                ("0:0", 0, 0, 0.0)])
def test_parse_mask_structure(text, n, m, ratio):
    parsed = parse_mask_structure(text)
    assert (parsed.n, parsed.m, parsed.ratio) == (n, m, ratio)
    assert parsed.unstructured == (text == "0:0")


@pytest.mark.parametrize("text", ["2-4", "2:4:8", "a:b", "", "2:", 24, None, "-1:4"])
def test_malformed_mask_structure_names_the_value(text):
    with pytest.raises(ValueError, match=r"malformed") as error:
        parse_mask_structure(text)
    assert repr(text) in str(error.value)


@pytest.mark.parametrize("text", ["4:4", "5:4", "0:4", "2:0"])
def test_impossible_mask_structure_is_refused(text):
    with pytest.raises(ValueError, match=f"'{text}' is invalid: need 0 < N < M"):
        parse_mask_structure(text)


def test_counts_by_hand():
    # S = 4/8 = 0.5; shifts (S - s)·8 = -0.8, 0, +0.8, +0.4, -0.4 → round -1, 0, 1, 0, 0
    result = mixed_nm_counts(np.array([0.6, 0.5, 0.4, 0.45, 0.55]), MaskStructure(4, 8))
    assert result.counts.tolist() == [5, 4, 3, 4, 4]
    assert not result.clipped
    # 2:4 with the same ratios: shifts -0.4, 0, 0.4, 0.2, -0.2 → all round to 0: uniform 2:4
    assert mixed_nm_counts(np.array([0.6, 0.5, 0.4, 0.45, 0.55]), MaskStructure(2, 4)).counts.tolist() == [2] * 5


def test_rounding_is_half_to_even_like_the_reference():
    # shifts exactly ±0.5 and ±1.5 (M = 4, S = 0.5): round(0.5)=0, round(1.5)=2, round(-0.5)=0, round(-1.5)=-2
    ratios = 0.5 - np.array([0.5, 1.5, -0.5, -1.5]) / 4
    assert mixed_nm_counts(ratios, MaskStructure(2, 4), bounds=(0.0, 0.99)).counts.tolist() == [2, 1, 2, 3]


def test_counts_are_clipped_to_one_and_m_minus_one_with_a_flag(caplog):
    result = mixed_nm_counts(np.array([0.0, 0.5, 0.99]), MaskStructure(2, 4))
    # shifts 2, 0, -1.96 → N 0, 2, 4 → clipped to 1 and 3
    assert result.counts.tolist() == [1, 2, 3]
    assert result.clipped and "clipped" in caplog.text


def test_bounds_narrow_the_allowed_n():
    result = mixed_nm_counts(np.array([0.3, 0.5, 0.7]), MaskStructure(4, 8), bounds=(0.45, 0.6))
    # raw N: 4 - round(1.6)=2, 4, 4 - round(-1.6)=6 → allowed [ceil(3.6)=4, floor(4.8)=4]
    assert result.counts.tolist() == [4, 4, 4] and result.clipped
    with pytest.raises(ValueError, match="leave no N"):
        mixed_nm_counts(np.array([0.5]), MaskStructure(4, 8), bounds=(0.51, 0.6))


def test_unstructured_and_nan_are_refused():
    with pytest.raises(ValueError, match="'0:0'"):
        mixed_nm_counts(np.array([0.5]), MaskStructure(0, 0))
    with pytest.raises(ValueError, match="NaN"):
        mixed_nm_counts(np.array([0.5, np.nan]), MaskStructure(2, 4))


def _reference_prune_n(outlier_ratios: np.ndarray, prune_n: int, lamda: float) -> np.ndarray:
    """luuyin/OWL prune_wanda_outlier_structure, restated: N_l = N0 - round(minmax(D)·Lamda - mean)."""
    r = (outlier_ratios - outlier_ratios.min()) / (outlier_ratios.max() - outlier_ratios.min()) * lamda
    return prune_n - np.round(r - r.mean())


@pytest.mark.parametrize("n, m, lamda", [(5, 8, 2.0), (4, 8, 2.0), (2, 4, 1.0), (8, 16, 3.0)])
def test_owl_ratios_then_counts_equal_the_reference_structure_formula(n, m, lamda):
    rng = np.random.default_rng(n * m)
    d = rng.uniform(1.0, 9.0, size=30)  # 30 equal blocks, like SmolLM2-135M
    structure = MaskStructure(n, m)
    ratios = owl_ratios(d, np.ones(30), structure.ratio, lam=lamda / (2 * m)).ratios
    ours = mixed_nm_counts(ratios, structure, bounds=(0.0, 0.999)).counts
    assert ours.tolist() == _reference_prune_n(d, n, lamda).astype(int).tolist()
    assert len(set(ours.tolist())) > 1  # the spread really moves N


def test_achieved_mean_is_parameter_weighted():
    # N = 5, 4, 3 of 8 with sizes 1, 1, 2 → (5/8 + 4/8 + 2·3/8) / 4 = 15/32
    assert achieved_mean(np.array([5, 4, 3]), 8, np.array([1, 1, 2])) == pytest.approx(15 / 32)
