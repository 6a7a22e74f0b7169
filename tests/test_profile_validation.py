"""Every profile that is read is validated by the core, and every route gives the same named error.

The issue's case: a profile whose ratios average 0.69 while its ``target`` says 0.5 used to prune
the model to 69% through ``oneshot()`` without a word. Now ``SparsityProfile.load`` refuses it
(``ProfileError`` naming the file, the target and the mean), and so do the recipe modifier
(``ProfileAllocationModifier``, also inside ``oneshot``), ``owl export --profile`` and
``owl prune --recipe`` (exit 2, one line) - before any weight changes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import PNG_SIGNATURE, run_cli
from transformers import AutoModelForCausalLM

from owl_plugin.allocate import allocate
from owl_plugin.config import UniformConfig
from owl_plugin.profile import MEAN_TOLERANCE, ProfileError, SparsityProfile


@pytest.fixture(scope="module")
def good(tiny_checkpoint: Path) -> dict:
    """A uniform 0.5 profile of the tiny checkpoint's linears, as its JSON dict."""
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    return allocate(model, 0.5, UniformConfig(), progress=False).to_dict()


def _mean_off(data: dict) -> None:  # the profile: ratios at 0.69, target still 0.5
    for entry in data["modules"].values():
        entry["sparsity"] = 0.69


def _first(data: dict) -> dict:
    return next(iter(data["modules"].values()))


def _mixed_nm(data: dict, achieved: float | None = None) -> None:
    """Mixed N:M: ratios N/M, the target what was asked, ``achieved_mean`` recorded (default: the true mean)."""
    for k, entry in enumerate(data["modules"].values()):
        entry["sparsity"] = 0.5 if k % 2 else 0.75
    if achieved is None:
        sizes = [e["num_params"] for e in data["modules"].values()]
        ratios = [e["sparsity"] for e in data["modules"].values()]
        achieved = math.fsum(s * r for s, r in zip(sizes, ratios, strict=True)) / sum(sizes)
    data["params"] = {"mask_structure": "2:4", "achieved_mean": achieved}


BAD = {
    "target-off-the-mean": (_mean_off, "target 0.5 but the ratios' parameter-weighted mean is 0.69"),
    "nan-ratio": (lambda d: _first(d).update(sparsity=math.nan), "has sparsity nan"),
    "ratio-one": (lambda d: _first(d).update(sparsity=1.0), "has sparsity 1.0; every ratio must be in [0, 1)"),
    "negative-ratio": (lambda d: _first(d).update(sparsity=-0.1), "has sparsity -0.1"),
    "infinite-target": (lambda d: d.update(target=math.inf), "target inf must be a finite sparsity in [0, 1)"),
    "target-above-one": (lambda d: d.update(target=1.5), "target 1.5 must be a finite sparsity in [0, 1)"),
    "no-modules": (lambda d: d.update(modules={}), "needs at least one module"),
    "zero-params": (lambda d: _first(d).update(num_params=0), "num_params=0; must be > 0"),
    "modules-a-list": (lambda d: d.update(modules=[1, 2]), "'modules' must map module names to entries"),
    "ratio-a-word": (lambda d: _first(d).update(sparsity="high"), "malformed sparsity profile"),
    "wrong-format": (lambda d: d.update(format="other"), "not a sparsity profile: format='other'"),
    "nm-record-edited": (lambda d: _mixed_nm(d, 0.5), "records achieved_mean 0.5"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_profiles_are_refused_naming_the_file_and_value(good, tmp_path, case) -> None:
    edit, words = BAD[case]
    data = json.loads(json.dumps(good))
    edit(data)
    path = tmp_path / "sparsity_profile.json"
    path.write_text(json.dumps(data))  # NaN / Infinity as Python's json writes them
    with pytest.raises(ProfileError) as error:
        SparsityProfile.load(path)
    assert str(error.value).startswith(f"invalid sparsity profile {path}: "), str(error.value)
    assert words in str(error.value)


@pytest.mark.parametrize(("content", "words"), [(b"{", "not JSON"), (PNG_SIGNATURE + b"\x00\xff", "not a text file"),
                                                (b"[]", "expected a JSON object, got list")])
def test_files_that_are_no_profile_are_refused_by_name(tmp_path, content, words) -> None:
    path = tmp_path / "p.json"
    path.write_bytes(content)
    with pytest.raises(ProfileError, match=f"invalid sparsity profile {path}: .*{words}"):
        SparsityProfile.load(path)


def test_valid_profiles_load(good, tmp_path) -> None:
    """Within the tolerance, and a mixed N:M profile whose mean is its recorded achieved mean, not its target."""
    data = json.loads(json.dumps(good))
    data["target"] += 0.9 * MEAN_TOLERANCE
    assert SparsityProfile.from_dict(data).target == data["target"]
    _mixed_nm(data)
    data["target"] = 0.6  # asked for 0.6, N rounded per unit
    loaded = SparsityProfile.from_dict(data)
    assert loaded.target == 0.6 and loaded.mean_sparsity() == pytest.approx(data["params"]["achieved_mean"])


# -- the same error from every route --------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_profile(good, tmp_path_factory) -> tuple[Path, str]:
    """The issue's profile (ratios 0.69, target 0.5) on disk, and the error text the core gives for it."""
    data = json.loads(json.dumps(good))
    _mean_off(data)
    path = tmp_path_factory.mktemp("bad-profile") / "sparsity_profile.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ProfileError) as error:
        SparsityProfile.load(path)  # the Python route
    return path, str(error.value)


def _recipe(folder: Path, profile: Path) -> Path:
    path = folder / "recipe.yaml"
    path.write_text("sparsity_stage:\n  sparsity_modifiers:\n"
                    f"    ProfileAllocationModifier: {{profile_file: '{profile}'}}\n"
                    "    WandaPruningModifier: {sparsity: 0.5, mask_structure: '0:0', "
                    "targets: ['re:model\\.layers\\.\\d+$']}\n")
    return path


def test_oneshot_with_the_recipe_modifier_refuses_it_before_pruning(tiny_checkpoint, tokenizer, bad_profile,
                                                                    tmp_path) -> None:
    from llmcompressor import oneshot

    from owl_plugin.integrations.llmcompressor import register_modifiers
    from owl_plugin.integrations.llmcompressor.prune import calibration_dataset

    register_modifiers()
    path, message = bad_profile
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    data = calibration_dataset(tokenizer, "pydoc", num_samples=2, seq_len=32, seed=0)
    with pytest.raises(ValueError) as error:  # pydantic wraps it while llmcompressor builds the modifier
        oneshot(model=model, processor=tokenizer, dataset=data, recipe=str(_recipe(tmp_path, path)),
                num_calibration_samples=2, max_seq_length=32)
    assert message in str(error.value)
    assert all(torch.equal(tensor, before[name]) for name, tensor in model.state_dict().items())


def test_cli_export_and_prune_refuse_it_in_one_line(tiny_checkpoint, bad_profile, tmp_path) -> None:
    path, message = bad_profile
    export = run_cli("export", str(tiny_checkpoint), "-o", str(tmp_path / "export"), "--format", "dense",
                     "--profile", str(path))
    prune = run_cli("prune", "--model", str(tiny_checkpoint), "--recipe", str(_recipe(tmp_path, path)),
                    "-o", str(tmp_path / "pruned"), "--num-samples", "2", "--seq-len", "32")
    for command, result in (("export", export), ("prune", prune)):
        assert result.returncode == 2, (command, result.stderr[-3000:])
        line = result.stderr.strip().splitlines()[-1]
        assert line.startswith(f"owl {command}: error: ") and message in line, (command, result.stderr[-3000:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]  # nothing written
