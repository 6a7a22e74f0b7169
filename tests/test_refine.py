"""``owl tune --refine``: the level-switch moves, the (1 + λ) search, and refinement inside ``tune``."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from conftest import PNG_SIGNATURE, TINY_VOCAB
from owl_plugin.profile import ModuleSparsity, SparsityProfile
from owl_plugin.tuning.proxy import WandaProxy
from owl_plugin.tuning.refine import RefineSettings, block_view, evolve, mutate, shifted
from owl_plugin.tuning.search import TuneSettings, tune

SMALL = TuneSettings(num_samples=3, seq_len=32, heldout_windows=2, heldout_seq_len=32)


@pytest.fixture
def stream() -> torch.Tensor:
    return torch.randint(0, TINY_VOCAB, (4000,), generator=torch.Generator().manual_seed(7))


# --------------------------------------------------------------------------- moves and search on arrays
def test_moves_keep_the_weighted_mean_and_the_bounds():
    sizes = np.array([100.0, 300.0, 50.0, 250.0, 120.0])
    start = np.full(5, 0.6)
    lower, upper = np.full(5, 0.5), np.full(5, 0.7)
    rng = np.random.default_rng(3)
    child, changed = start, 0
    for _ in range(400):
        nxt = mutate(child, sizes, lower, upper, rng, step=0.03, max_moves=3)
        changed += not np.array_equal(nxt, child)
        child = nxt
        assert np.dot(sizes, child) == pytest.approx(np.dot(sizes, start), abs=1e-9)
        assert np.all(child >= lower - 1e-12) and np.all(child <= upper + 1e-12)
    assert changed > 100 and np.ptp(child) > 0.05  # it does move, and far


def test_evolve_descends_a_known_bowl_deterministically():
    """Score = squared distance to a target allocation with the same mean: the search must approach it."""
    sizes = np.ones(8)
    goal = np.array([0.50, 0.52, 0.56, 0.60, 0.60, 0.64, 0.68, 0.70])
    start = np.full(8, goal.mean())

    def bowl(r):
        return float(((r - goal) ** 2).sum())

    settings = RefineSettings(generations=60, offspring=4, step=0.01, seed=1)
    found = evolve(start, sizes, np.zeros(8), np.full(8, 0.99), score=bowl, screen=bowl, settings=settings,
                   progress=False)
    assert found.score < 0.25 * bowl(start) and found.accepted > 5
    assert found.ratios.mean() == pytest.approx(goal.mean(), abs=1e-12)
    assert len(found.history) == 60 and all(a >= b for a, b in itertools.pairwise(found.history))
    again = evolve(start, sizes, np.zeros(8), np.full(8, 0.99), score=bowl, screen=bowl, settings=settings,
                   progress=False)
    assert np.array_equal(again.ratios, found.ratios)


@pytest.mark.parametrize("field, value", [("generations", -1), ("offspring", 0), ("step", 0.7), ("step", 0.0),
                                          ("max_moves", 0), ("screen_windows", 0), ("generations", 2.5)])
def test_settings_reject_bad_values_naming_them(field, value):
    with pytest.raises(ValueError, match=f"{field}={value!r}"):
        RefineSettings(**{field: value})


def test_block_view_and_shift_keep_each_blocks_inner_shape():
    modules = {"b0.q": ModuleSparsity(0.5, 100, "b0"), "b0.k": ModuleSparsity(0.7, 100, "b0"),
               "b1.q": ModuleSparsity(0.6, 200, "b1")}
    profile = SparsityProfile(method="owl", target=(0.5 * 100 + 0.7 * 100 + 0.6 * 200) / 400, modules=modules,
                              bounds=(0.1, 0.9))
    names, ratios, sizes, lower, upper = block_view(profile)
    assert names == ["b0", "b1"] and list(sizes) == [200, 200]
    assert ratios[0] == pytest.approx(0.6) and lower[0] == pytest.approx(0.2) and upper[0] == pytest.approx(0.8)
    moved = shifted(profile, names, np.array([0.65, 0.55]))
    assert moved.sparsities == pytest.approx({"b0.q": 0.55, "b0.k": 0.75, "b1.q": 0.55})
    assert moved.mean_sparsity() == pytest.approx(profile.mean_sparsity(), abs=1e-12) and moved.method == "refined"


# --------------------------------------------------------------------------- inside owl tune
def test_tune_refines_the_best_candidate_and_replays_from_the_log(tiny_model, stream, tmp_path, monkeypatch):
    refine = RefineSettings(generations=3, offspring=2, step=0.05)
    first = tune(tiny_model, stream, target=0.6, methods=["atp"], budget=1, settings=SMALL,
                 cache_root=tmp_path, progress=False, refine=refine)
    grid_best = min((r for r in first.records if r["method"] != "refined"), key=lambda r: r["kl"])
    refined = next(r for r in first.records if r["method"] == "refined")
    assert refined["params"]["from"] == grid_best["method"] and refined["kl"] <= grid_best["kl"]
    assert len(refined["history"]) == 1 + 3 and refined["history"][0] == grid_best["kl"]
    assert first.best["kl"] == min(r["kl"] for r in first.records)
    assert first.profile.mean_sparsity() == pytest.approx(0.6, abs=1e-9)
    if refined["accepted"]:  # the saved profile is the refined one, with its provenance
        assert first.profile.method == "refined" and first.profile.params["from"]["method"] == grid_best["method"]
        assert list(first.profile.block_sparsities().values()) == pytest.approx(refined["blocks"])
    log = next((tmp_path / "tune").glob("*/refine-0.6.jsonl")).read_text().splitlines()
    assert {json.loads(json.loads(line)["id"])["windows"] for line in log} == {"all", "first 2"}

    def must_not_score(self, profile):
        raise AssertionError("a logged candidate was scored again")

    monkeypatch.setattr(WandaProxy, "score", must_not_score)
    second = tune(tiny_model, stream, target=0.6, methods=["atp"], budget=1, settings=SMALL,
                  cache_root=tmp_path, progress=False, refine=refine)
    assert second.records == first.records[:-1] + [{**first.records[-1], "seconds": second.records[-1]["seconds"]}]
    assert second.profile.sparsities == first.profile.sparsities


def test_cli_tune_refine_writes_the_trajectory_plot(tiny_checkpoint, tmp_path):
    from conftest import run_cli

    output = tmp_path / "tuned"
    result = run_cli("tune", str(tiny_checkpoint), "--method", "dlp", "--sparsity", "0.5", "--budget", "1",
                     "--calibration", "pydoc", "--num-samples", "2", "--seq-len", "64", "--heldout-windows", "2",
                     "--heldout-seq-len", "64", "--cache", str(tmp_path / "cache"), "--output", str(output),
                     "--refine", "2", "--refine-offspring", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| refined from=" in (output / "candidates.md").read_text()
    assert (output / "scores.png").read_bytes()[:8] == PNG_SIGNATURE
    assert SparsityProfile.load(output).mean_sparsity() == pytest.approx(0.5, abs=1e-9)

    bad = run_cli("tune", str(tiny_checkpoint), "--sparsity", "0.5", "--refine", "2", "--refine-step", "0.7",
                  "--output", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "step=0.7" in bad.stderr and not (tmp_path / "bad").exists()
