"""``owl prune --compare-uniform``: the allocated model against a uniform one, on held-out calibration text.

The uniform number is reproduced by hand here (same head of the text, Wanda at the target
with no allocation modifier, perplexity on the tail), so the comparison cannot be a constant
or the allocated model scored twice.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("llmcompressor")

from llmcompressor import oneshot
from transformers import AutoModelForCausalLM

from owl_plugin.evaluation import perplexity
from owl_plugin.integrations.llmcompressor.compare import HELDOUT_FRACTION, HELDOUT_WINDOWS, uniform_recipe
from owl_plugin.integrations.llmcompressor.prune import prune, token_dataset
from owl_plugin.profile import SparsityProfile
from owl_plugin.text import heldout_split, load_text, tokenize

from conftest import run_cli

LAYERS = r"re:model\.layers\.\d+$"
ALLOCATIONS = {"OWLAllocationModifier", "AlphaAllocationModifier", "ProfileAllocationModifier"}
OWL_RECIPE = ("sparsity_stage:\n  sparsity_modifiers:\n    OWLAllocationModifier: {owl_m: 3, owl_lambda: 0.2}\n"
              f"    WandaPruningModifier: {{sparsity: 0.6, mask_structure: \"0:0\", targets: ['{LAYERS}']}}\n")


def test_uniform_recipe_drops_the_allocation_and_sets_the_pruner_to_the_target():
    recipe = {"s_stage": {"s_modifiers": {
        "AlphaAllocationModifier": {"epsilon": 0.3, "targets": ["re:a"], "ignore": ["lm_head"]},
        "SparseGPTModifier": {"sparsity": 0.5, "targets": ["re:b"], "block_size": 64}}}}
    uniform = uniform_recipe(recipe, 0.7, ALLOCATIONS)
    assert uniform == {"s_stage": {"s_modifiers": {"SparseGPTModifier": {
        "sparsity": 0.7, "targets": ["re:a"], "ignore": ["lm_head"], "block_size": 64}}}}
    assert "AlphaAllocationModifier" in recipe["s_stage"]["s_modifiers"]  # the input is not modified


@pytest.mark.parametrize("recipe, message", [
    ({"s_stage": {"s_modifiers": {"WandaPruningModifier": {"sparsity": 0.5}}}}, "prunes uniformly already"),
    ({"s_stage": {"s_modifiers": {"OWLAllocationModifier": {}, "ConstantPruningModifier": {}}}}, "has no pruner"),
])
def test_uniform_recipe_refuses_recipes_it_cannot_compare(recipe, message):
    with pytest.raises(ValueError, match=message):
        uniform_recipe(recipe, 0.5, ALLOCATIONS)


@pytest.mark.llmcompressor
def test_compare_uniform_scores_both_models_on_held_out_text(tmp_path, tiny_dir, tokenizer):
    recipe = tmp_path / "owl.yaml"
    recipe.write_text(OWL_RECIPE)
    seq_len, samples = 64, 4
    result = prune(str(tiny_dir), recipe, tmp_path / "out", num_samples=samples, seq_len=seq_len,
                   compare_uniform=True)
    comparison = result.comparison
    assert comparison is not None and comparison.method == "owl" and comparison.target == pytest.approx(0.6)
    assert comparison.windows == HELDOUT_WINDOWS and comparison.heldout_fraction == HELDOUT_FRACTION

    head, tail = heldout_split(tokenize(tokenizer, load_text("pydoc")), fraction=HELDOUT_FRACTION,
                               windows=HELDOUT_WINDOWS, window_len=seq_len, head_min=seq_len)
    score = {"seq_len": seq_len, "max_windows": HELDOUT_WINDOWS, "progress": False}
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    assert perplexity(saved, tail, **score) == pytest.approx(comparison.ppl, rel=1e-4)

    by_hand = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    uniform = f"s_stage:\n  s_modifiers:\n    WandaPruningModifier: {{sparsity: 0.6, targets: ['{LAYERS}']}}\n"
    oneshot(model=by_hand, processor=tokenizer, dataset=token_dataset(head, num_samples=samples, seq_len=seq_len,
                                                                      seed=0),
            recipe=uniform, num_calibration_samples=samples, max_seq_length=seq_len, shuffle_calibration_samples=False)
    assert perplexity(by_hand, tail, **score) == pytest.approx(comparison.uniform_ppl, rel=1e-4)
    assert comparison.ppl != pytest.approx(comparison.uniform_ppl, rel=1e-6)  # two different models were scored

    recorded = SparsityProfile.load(tmp_path / "out").params
    assert recorded["compare_uniform"]["relative"] == pytest.approx(comparison.ppl / comparison.uniform_ppl - 1)
    assert recorded["calibration"]["heldout"] == {"fraction": HELDOUT_FRACTION, "tokens": tail.numel()}


@pytest.mark.llmcompressor
def test_cli_prints_the_comparison_and_refuses_a_uniform_recipe_before_loading(tmp_path, tiny_checkpoint):
    recipe = tmp_path / "owl.yaml"
    recipe.write_text(OWL_RECIPE)
    args = ["--model", str(tiny_checkpoint), "--num-samples", "4", "--seq-len", "64", "--compare-uniform"]
    proc = run_cli("prune", "--recipe", str(recipe), "--output", str(tmp_path / "out"), *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(li for li in proc.stdout.splitlines() if li.startswith("held-out perplexity"))
    relative = json.loads((tmp_path / "out" / "sparsity_profile.json").read_text())["params"]["compare_uniform"]
    assert f"owl {relative['ppl']:.3f} vs uniform {relative['uniform_ppl']:.3f}" in line

    flat = tmp_path / "uniform.yaml"
    flat.write_text(f"s_stage:\n  s_modifiers:\n    WandaPruningModifier: {{sparsity: 0.5, targets: ['{LAYERS}']}}\n")
    proc = run_cli("prune", "--recipe", str(flat), "--output", str(tmp_path / "never"), *args)
    assert proc.returncode == 2 and "prunes uniformly already" in proc.stderr
    assert not (tmp_path / "never").exists()
