"""The allocation modifiers through the real llmcompressor ``oneshot``.

Small random Llama models check the mechanics and every error case quickly; the real default
model (SmolLM2-135M) checks the YAML path end to end with Wanda and SparseGPT.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("llmcompressor")

from llmcompressor import oneshot
from llmcompressor.modifiers.pruning import WandaPruningModifier
from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier
from pydantic import ValidationError
from transformers import AutoModelForCausalLM

from owl_plugin.integrations.llmcompressor import AlphaAllocationModifier, OWLAllocationModifier
from owl_plugin.integrations.llmcompressor.prune import calibration_dataset, nm_summary, prune
from owl_plugin.integrations.llmcompressor.recipe import check_recipe_nesting
from owl_plugin.profile import SparsityProfile
from owl_plugin.verify import measured_sparsities, overall_sparsity, profile_mismatches

LAYERS = r"re:model\.layers\.\d+$"




def _run(model_dir: Path, tokenizer, recipe, *, samples: int = 4, seq_len: int = 64):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    data = calibration_dataset(tokenizer, "pydoc", num_samples=samples, seq_len=seq_len, seed=0)
    oneshot(model=model, processor=tokenizer, dataset=data, recipe=recipe, num_calibration_samples=samples,
            max_seq_length=seq_len, shuffle_calibration_samples=False)
    return model


def _assert_applied(model, profile: SparsityProfile) -> None:
    measured = measured_sparsities(model, profile)
    assert profile_mismatches(profile, measured) == []
    assert abs(overall_sparsity(measured, profile) - profile.target) <= 1 / 64 + 1e-9


@pytest.mark.llmcompressor
@pytest.mark.parametrize("pruner_cls", [WandaPruningModifier, SparseGPTModifier])
def test_python_objects_owl_prunes_each_block_to_its_ratio(tiny_dir, tokenizer, pruner_cls):
    allocation = OWLAllocationModifier(owl_m=5, owl_lambda=0.08)
    model = _run(tiny_dir, tokenizer, [allocation, pruner_cls(sparsity=0.6, mask_structure="0:0", targets=[LAYERS])])
    profile = allocation.profile
    assert profile is not None and profile.method == "owl"
    assert len(profile.block_sparsities()) == 4
    assert max(profile.block_sparsities().values()) - min(profile.block_sparsities().values()) == pytest.approx(0.16)
    assert abs(profile.mean_sparsity() - 0.6) < 1e-6
    _assert_applied(model, profile)


@pytest.mark.llmcompressor
def test_statistics_samples_uses_only_the_first_windows_for_the_statistics(tiny_dir, tokenizer):
    data = calibration_dataset(tokenizer, "pydoc", num_samples=4, seq_len=64, seed=0)

    def allocate(dataset, **kwargs):
        allocation = OWLAllocationModifier(owl_lambda=0.08, granularity="linear", **kwargs)
        model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
        oneshot(model=model, processor=tokenizer, dataset=dataset, num_calibration_samples=len(dataset),
                max_seq_length=64, shuffle_calibration_samples=False,
                recipe=[allocation, WandaPruningModifier(sparsity=0.6, mask_structure="0:0", targets=[LAYERS])])
        return allocation.profile

    capped = allocate(data, statistics_samples=2)
    first_two = allocate(data.select(range(2)))
    everything = allocate(data)
    assert capped.params["statistics_windows"] == 2 and everything.params["statistics_windows"] == 4
    assert capped.sparsities == pytest.approx(first_two.sparsities, abs=1e-12)
    assert capped.sparsities != pytest.approx(everything.sparsities, abs=1e-6)  # the cap changed the statistics


@pytest.mark.llmcompressor
def test_alpha_per_linear_granularity_rewrites_targets_and_respects_ignore(tiny_dir, tokenizer):
    allocation = AlphaAllocationModifier(epsilon=0.2, granularity="linear")
    pruner = WandaPruningModifier(sparsity=0.5, mask_structure="0:0", targets=[LAYERS], ignore=["re:.*down_proj$"])
    model = _run(tiny_dir, tokenizer, [allocation, pruner])
    profile = allocation.profile
    assert len(profile.modules) == 4 * 6  # seven linears per block, down_proj ignored
    assert not any(name.endswith("down_proj") for name in profile.modules)
    assert len(set(profile.sparsities.values())) > 4  # per-linear ratios, not per-block
    _assert_applied(model, profile)
    assert float((model.model.layers[0].mlp.down_proj.weight == 0).float().mean()) == 0.0


def _assert_nm_masks(model, profile: SparsityProfile, m: int) -> None:
    """Every group of M consecutive input weights of every pruned module has exactly its N zeros."""
    modules = dict(model.named_modules())
    for name, entry in profile.modules.items():
        n, group = (int(x) for x in profile.params["nm"][name].split(":"))
        assert group == m and entry.sparsity == n / m
        weight = modules[name].weight.detach()
        zeros = (weight.reshape(weight.shape[0], -1, m) == 0).sum(dim=-1)
        assert torch.all(zeros == n), f"{name}: zeros per group {zeros.unique().tolist()}, allocated N={n}"


@pytest.mark.llmcompressor
@pytest.mark.parametrize("pruner_cls", [WandaPruningModifier, SparseGPTModifier])
@pytest.mark.parametrize("allocation_cls, kwargs", [(OWLAllocationModifier, {"owl_lambda": 0.125}),
                                                   (AlphaAllocationModifier, {"epsilon": 0.5})],
                         ids=["owl", "alpha"])
def test_mixed_n_m_gives_each_block_its_own_n(tiny_dir, tokenizer, pruner_cls, allocation_cls, kwargs, caplog):
    allocation = allocation_cls(**kwargs)
    pruner = pruner_cls(sparsity=0.5, mask_structure="4:8", targets=[LAYERS])
    model = _run(tiny_dir, tokenizer, [allocation, pruner])
    profile = allocation.profile
    assert profile.params["mask_structure"] == "4:8" and profile.target == 0.5
    counts = {profile.params["nm"][name] for name in profile.modules}
    assert len(counts) > 1, f"N did not move: {counts}"  # really mixed, not uniform 4:8
    per_block = {}
    for name, entry in profile.modules.items():
        per_block.setdefault(entry.block, set()).add(profile.params["nm"][name])
    assert all(len(v) == 1 for v in per_block.values())  # one N per decoder block, as in the reference
    # N follows the continuous allocation: N = 4 - round((0.5 - s_block)·8)
    for block, ratio in profile.params["allocated_ratios"].items():
        assert per_block[block] == {f"{4 - round((0.5 - ratio) * 8)}:8"}
    assert profile.params["achieved_mean"] == pytest.approx(profile.mean_sparsity())
    if abs(profile.mean_sparsity() - 0.5) > 1e-9:
        assert "achieved mean sparsity" in caplog.text
    _assert_nm_masks(model, profile, 8)
    _assert_applied_mean(model, profile)


def _assert_applied_mean(model, profile: SparsityProfile) -> None:
    measured = measured_sparsities(model, profile)
    assert profile_mismatches(profile, measured, rows_tolerance=0.0) == []
    assert overall_sparsity(measured, profile) == pytest.approx(profile.mean_sparsity(), abs=1e-9)


@pytest.mark.llmcompressor
def test_prune_saves_mixed_n_m_profile_matching_the_checkpoint(tmp_path, tiny_dir, tokenizer):
    recipe = tmp_path / "nm.yaml"
    recipe.write_text(
        "sparsity_stage:\n  sparsity_modifiers:\n    OWLAllocationModifier: {owl_m: 5, owl_lambda: 0.125}\n"
        f"    WandaPruningModifier: {{sparsity: 0.5, mask_structure: \"4:8\", targets: ['{LAYERS}']}}\n"
    )
    result = prune(str(tiny_dir), recipe, tmp_path / "out", num_samples=4, seq_len=64)
    saved = SparsityProfile.load(tmp_path / "out")
    assert saved.params["nm"] == result.profile.params["nm"] and saved.params["mask_structure"] == "4:8"
    assert result.measured_sparsity == pytest.approx(saved.mean_sparsity(), abs=1e-9)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    _assert_nm_masks(reloaded, saved, 8)
    assert "achieved mean sparsity" in nm_summary(saved)


@pytest.mark.parametrize("value, message", [("2-4", "'2-4' is malformed"), (124, "read as the number 124"),
                                            ("6:4", "'6:4' is invalid")])
def test_recipe_check_names_a_bad_mask_structure(value, message):
    recipe = {"s_stage": {"s_modifiers": {"WandaPruningModifier": {"sparsity": 0.5, "mask_structure": value}}}}
    with pytest.raises(ValueError, match=message):
        check_recipe_nesting(recipe)


def _weights(model_dir):
    return {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(model_dir).state_dict().items()}


@pytest.mark.llmcompressor
@pytest.mark.parametrize(
    "recipe, message",
    [
        ([OWLAllocationModifier()], "must be followed"),
        ([OWLAllocationModifier(), AlphaAllocationModifier(), WandaPruningModifier(sparsity=0.5, targets=[LAYERS])],
         "followed by another allocation modifier"),
        ([AlphaAllocationModifier(), WandaPruningModifier(sparsity=0.5, targets=[r"re:nothing\.here$"])],
         "match no prunable module"),
        ([AlphaAllocationModifier(), WandaPruningModifier(sparsity=0.5, targets=["Linear"])], "lm_head"),
        ([AlphaAllocationModifier(), WandaPruningModifier(sparsity=0.7, mask_structure="2:4", targets=[LAYERS])],
         "sparsity=0.7 contradicts mask_structure='2:4'"),
        ([AlphaAllocationModifier(), WandaPruningModifier(sparsity=0.5, mask_structure="4:2", targets=[LAYERS])],
         "mask_structure='4:2' is invalid"),
        ([AlphaAllocationModifier(), WandaPruningModifier(sparsity=None, mask_structure="1:3", targets=[LAYERS])],
         "64 input features, not a multiple of M=3"),
        ([AlphaAllocationModifier(), WandaPruningModifier(sparsity=[0.5] * 4, targets=[LAYERS])], "one target"),
    ],
    ids=["no-pruner", "two-allocators", "no-match", "lm-head", "n-m-vs-sparsity", "n-m-impossible", "n-m-width",
         "list-sparsity"],
)
def test_bad_recipes_fail_before_any_weight_changes(tiny_dir, tokenizer, recipe, message):
    before = _weights(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    data = calibration_dataset(tokenizer, "pydoc", num_samples=2, seq_len=32, seed=0)
    with pytest.raises(ValueError, match=message):
        oneshot(model=model, processor=tokenizer, dataset=data, recipe=recipe, num_calibration_samples=2,
                max_seq_length=32)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), f"{name} changed although the recipe was rejected"


@pytest.mark.parametrize(
    "kwargs, bad",
    [({"owl_lambda": -0.1}, "-0.1"), ({"owl_lambda": 0.6}, "0.6"), ({"owl_m": 0}, "m=0"),
     ({"sparsity": 1.2}, "1.2"), ({"granularity": "row"}, "row"), ({"bogus": 1}, "bogus"),
     ({"statistics_samples": 0}, "statistics_samples=0")],
)
def test_owl_modifier_validates_its_fields(kwargs, bad):
    with pytest.raises((ValidationError, ValueError), match=bad):
        OWLAllocationModifier(**kwargs)


@pytest.mark.parametrize("kwargs, bad",
                         [({"epsilon": 1.0}, "1.0"), ({"epsilon": -0.2}, "-0.2"), ({"xmin": "max"}, "max")])
def test_alpha_modifier_validates_its_fields(kwargs, bad):
    with pytest.raises((ValidationError, ValueError), match=bad):
        AlphaAllocationModifier(**kwargs)


@pytest.mark.parametrize(
    "recipe, message",
    [
        ({"OWLAllocationModifier": {}, "WandaPruningModifier": {"sparsity": 0.5}}, "top level"),
        ({"sparsity_stage": {"WandaPruningModifier": {"sparsity": 0.5}}}, "directly under"),
        ({"sparsity_stage": {"sparsity_modifiers": {"OWLAllocationModifier": None}}}, "needs a mapping"),
        ({"sparsity_stage": {}}, "no modifiers"),
    ],
)
def test_flat_or_empty_recipes_are_refused(recipe, message):
    with pytest.raises(ValueError, match=message):
        check_recipe_nesting(recipe)


@pytest.mark.llmcompressor
def test_prune_refuses_flat_recipe_file_and_existing_output(tmp_path, tiny_dir):
    flat = tmp_path / "flat.yaml"
    flat.write_text("WandaPruningModifier: {sparsity: 0.5}\n")
    with pytest.raises(ValueError, match="top level"):
        prune(str(tiny_dir), flat, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "mine.txt").write_text("a user's file")  # an empty folder is accepted
    good = tmp_path / "good.yaml"
    good.write_text(f"s_stage:\n  s_modifiers:\n    WandaPruningModifier: {{sparsity: 0.5, targets: ['{LAYERS}']}}\n")
    with pytest.raises(FileExistsError, match="--overwrite"):
        prune(str(tiny_dir), good, tmp_path / "existing")


RECIPE = """\
sparsity_stage:
  sparsity_modifiers:
    {allocation}
    {pruner}: {{sparsity: {sparsity}, mask_structure: "0:0", targets: ["re:model\\\\.layers\\\\.\\\\d+$"]}}
"""


@pytest.mark.llmcompressor
@pytest.mark.real_model
@pytest.mark.slow
@pytest.mark.parametrize(
    "allocation, pruner",
    [
        ("OWLAllocationModifier: {owl_m: 5, owl_lambda: 0.08}", "WandaPruningModifier"),
        ("OWLAllocationModifier: {owl_m: 5, owl_lambda: 0.08}", "SparseGPTModifier"),
        ("AlphaAllocationModifier: {epsilon: 0.2}", "WandaPruningModifier"),
        ("AlphaAllocationModifier: {epsilon: 0.2}", "SparseGPTModifier"),
    ],
    ids=["owl-wanda", "owl-sparsegpt", "alpha-wanda", "alpha-sparsegpt"],
)
def test_yaml_recipe_on_real_model_saves_checkpoint_matching_profile(tmp_path, allocation, pruner):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(allocation=allocation, pruner=pruner, sparsity=0.7))
    output = tmp_path / "pruned"
    proc = subprocess.run(
        [sys.executable, "-m", "owl_plugin", "prune", "--recipe", str(recipe), "--model", "default",
         "--dataset", "pydoc", "--num-samples", "4", "--seq-len", "128", "--output", str(output)],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    profile = SparsityProfile.load(output)
    assert profile.method == ("owl" if "OWL" in allocation else "alpha")
    assert len(profile.block_sparsities()) == 30 and len(profile.modules) == 210
    assert abs(profile.mean_sparsity() - 0.7) < 1e-6
    assert max(profile.sparsities.values()) - min(profile.sparsities.values()) > 0.05
    config = json.loads((output / "config.json").read_text())
    assert "sparsity_config" not in json.dumps(config)
    assert (output / "recipe.yaml").read_text() == recipe.read_text()
    assert (output / "sparsity_profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    reloaded = AutoModelForCausalLM.from_pretrained(output, dtype=torch.float32)
    measured = measured_sparsities(reloaded, profile)
    assert profile_mismatches(profile, measured) == []
    assert abs(overall_sparsity(measured, profile) - 0.7) < 0.005


@pytest.mark.llmcompressor
def test_yaml_recipe_resolves_modifiers_without_importing_owl_plugin(tmp_path):
    """The start-up hook registers the modifiers as soon as llmcompressor is imported."""
    recipe = Path(__file__).resolve().parents[1] / "examples" / "recipes" / "owl_wanda.yaml"
    code = (
        "import sys\nassert 'owl_plugin' not in sys.modules, 'owl_plugin imported at start-up'\n"
        "from llmcompressor.recipe import Recipe\n"
        "print('hook fired:', 'owl_plugin.integrations.llmcompressor.modifiers' in sys.modules)\n"
        f"names = [type(m).__name__ for m in Recipe.create_instance({str(recipe)!r}).modifiers]\n"
        "print(names)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "hook fired: True" in proc.stdout and "['OWLAllocationModifier', 'WandaPruningModifier']" in proc.stdout
    disabled = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                              timeout=300, env={**__import__("os").environ, "OWL_PLUGIN_NO_AUTOLOAD": "1"})
    assert disabled.returncode != 0 and "OWLAllocationModifier" in disabled.stderr
    assert "hook fired: False" in disabled.stdout
