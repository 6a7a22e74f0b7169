"""SparsityProfile: views, JSON round trip, validation, rescaling, and the plot."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from owl_plugin import ModuleSparsity, SparsityProfile, plot_profiles
from owl_plugin.profile import FORMAT, PROFILE_FILENAME, VERSION

from conftest import PNG_SIGNATURE


@pytest.fixture
def profile() -> SparsityProfile:
    # block 0: a (0.5, 100), b (0.8, 300); block 1: c (0.6, 200)
    return SparsityProfile(
        method="owl", target=410 / 600,
        modules={
            "model.layers.0.a": ModuleSparsity(0.5, 100, "model.layers.0"),
            "model.layers.0.b": ModuleSparsity(0.8, 300, "model.layers.0"),
            "model.layers.1.c": ModuleSparsity(0.6, 200, "model.layers.1"),
        },
        params={"m": 5.0, "lam": 0.08, "bounds": [0.0, 0.99], "calibration": {"source": "pydoc", "seed": 0}},
        scores={"model.layers.0": 1.5, "model.layers.1": 3.25},
        projected=True,
    )


def test_views_hand_computed(profile):
    # block 0: (0.5*100 + 0.8*300) / 400 = 290 / 400 = 0.725; block 1: 0.6
    assert profile.block_sparsities() == pytest.approx({"model.layers.0": 0.725, "model.layers.1": 0.6})
    assert list(profile.block_sparsities()) == ["model.layers.0", "model.layers.1"]
    # overall: (50 + 240 + 120) / 600 = 410 / 600
    assert profile.mean_sparsity() == pytest.approx(410 / 600, abs=1e-15)
    assert profile.sparsities == {"model.layers.0.a": 0.5, "model.layers.0.b": 0.8, "model.layers.1.c": 0.6}
    summary = profile.summary()
    assert "owl" in summary and "3 modules" in summary and "2 blocks" in summary and "projected" in summary


def test_json_round_trip_through_a_folder(profile, tmp_path):
    written = profile.save(tmp_path)
    assert written == tmp_path / PROFILE_FILENAME
    loaded = SparsityProfile.load(tmp_path)
    assert loaded == profile
    assert list(loaded.modules) == list(profile.modules)  # model order kept
    data = json.loads(written.read_text())
    assert data["format"] == FORMAT and data["version"] == VERSION
    assert data["mean_sparsity"] == pytest.approx(410 / 600)


def test_json_round_trip_through_a_file(profile, tmp_path):
    path = tmp_path / "nested" / "my-profile.json"
    assert profile.save(path) == path
    assert SparsityProfile.load(path) == profile
    assert SparsityProfile.from_json(profile.to_json()) == profile
    assert not list(path.parent.glob("*.tmp"))  # the atomic write leaves no temporary file


def test_save_into_a_new_folder_given_with_a_trailing_slash(profile, tmp_path):
    """The package docstring's usage: ``profile.save("out/")`` then ``plot_profiles(profile, "out/...png")``.

    BUG: ``Path("out/")`` drops the slash and ``out`` does not exist yet, so ``save`` writes a
    *file* named ``out``; the plot into ``out/`` then fails with FileExistsError.
    """
    folder = tmp_path / "out"
    written = profile.save(f"{folder}/")
    assert folder.is_dir(), f"save('out/') wrote a file {written} instead of creating the folder"
    assert written == folder / PROFILE_FILENAME
    assert plot_profiles(profile, folder / "sparsity_profile.png").is_file()


def test_from_dict_rejects_wrong_format_and_version(profile):
    data = profile.to_dict()
    with pytest.raises(ValueError, match="not a sparsity profile: format='something-else'"):
        SparsityProfile.from_dict({**data, "format": "something-else"})
    with pytest.raises(ValueError, match="version 2 is not supported"):
        SparsityProfile.from_dict({**data, "version": 2})
    missing = {k: v for k, v in data.items() if k != "target"}
    with pytest.raises(ValueError, match="malformed sparsity profile.*target"):
        SparsityProfile.from_dict(missing)


def test_from_dict_rejects_modules_that_are_not_a_mapping(profile):
    """BUG: ``data["modules"].items()`` on a list raises AttributeError, not the promised ValueError."""
    with pytest.raises(ValueError, match="malformed"):
        SparsityProfile.from_dict({**profile.to_dict(), "modules": [["model.layers.0.a", 0.5]]})


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (ModuleSparsity(1.0, 10, "b"), "sparsity 1.0"),
        (ModuleSparsity(-0.2, 10, "b"), "sparsity -0.2"),
        (ModuleSparsity(float("nan"), 10, "b"), "sparsity nan"),
        (ModuleSparsity(0.5, 0, "b"), "num_params=0"),
    ],
)
def test_profile_rejects_bad_entries(entry, message):
    with pytest.raises(ValueError, match=message):
        SparsityProfile(method="uniform", target=0.5, modules={"x": entry})


def test_profile_rejects_empty():
    with pytest.raises(ValueError, match="at least one module"):
        SparsityProfile(method="uniform", target=0.5, modules={})


def test_rescaled_keeps_shape_and_mean(profile):
    new = profile.rescaled(0.5)
    assert new.mean_sparsity() == pytest.approx(0.5, abs=1e-12)
    scale = 0.5 / profile.target
    for name, entry in profile.modules.items():
        assert new.modules[name].sparsity == pytest.approx(entry.sparsity * scale, rel=1e-12)
        assert new.modules[name].num_params == entry.num_params and new.modules[name].block == entry.block
    assert new.method == profile.method and new.params == profile.params and new.scores == profile.scores
    assert new.target == 0.5


def test_rescaled_projects_when_it_leaves_the_bounds(caplog):
    base = SparsityProfile(
        method="alpha", target=0.7,
        modules={"m.0.x": ModuleSparsity(0.5, 1, "m.0"), "m.1.x": ModuleSparsity(0.9, 1, "m.1")},
    )
    # 0.9 * 0.9 / 0.7 = 1.157 > 0.99 -> projected; 0.5 * 0.9/0.7 = 0.643
    # shift: (0.643 + t) + 0.99 = 1.8 -> t = 0.167; ratios [0.81, 0.99]
    with caplog.at_level(logging.WARNING, logger="owl_plugin.bounds"):
        new = base.rescaled(0.9)
    assert new.projected is True and "rescaled" in caplog.text
    assert new.mean_sparsity() == pytest.approx(0.9, abs=1e-9)
    assert new.sparsities == pytest.approx({"m.0.x": 0.81, "m.1.x": 0.99}, abs=1e-9)


def _read_png(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    return image


def test_plot_single_profile_with_scores(profile, tmp_path):
    path = plot_profiles(profile, tmp_path / "plots" / "profile.png", title="hello")
    assert path == tmp_path / "plots" / "profile.png"
    image = _read_png(path)
    assert float(np.std(image[..., :3])) > 0.01  # not a blank canvas


def test_plot_several_profiles(profile, tmp_path):
    other = profile.rescaled(0.6)
    _read_png(plot_profiles([profile, other], tmp_path / "both.png"))
