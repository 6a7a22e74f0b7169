"""DLP, ATP and saved-profile allocation modifiers through the real llmcompressor ``oneshot``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("llmcompressor")

from llmcompressor.modifiers.pruning import WandaPruningModifier
from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier
from pydantic import ValidationError
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from owl_plugin.allocate import allocate
from owl_plugin.config import AlphaConfig, ATPConfig
from owl_plugin.integrations.llmcompressor import (
    ATPAllocationModifier, DLPAllocationModifier, ProfileAllocationModifier,
)
from owl_plugin.integrations.llmcompressor.prune import calibration_dataset, prune
from owl_plugin.layers import prunable_linears
from owl_plugin.profile import SparsityProfile
from owl_plugin.verify import measured_sparsities, profile_mismatches

LAYERS = r"re:model\.layers\.\d+$"
pytestmark = pytest.mark.llmcompressor




def _load(model_dir: Path):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def _run(model, tokenizer, recipe, *, samples: int = 4, seq_len: int = 64):
    from llmcompressor import oneshot

    data = calibration_dataset(tokenizer, "pydoc", num_samples=samples, seq_len=seq_len, seed=0)
    oneshot(model=model, processor=tokenizer, dataset=data, recipe=recipe, num_calibration_samples=samples,
            max_seq_length=seq_len, shuffle_calibration_samples=False)
    return model


def test_dlp_with_wanda_prunes_each_block_to_its_ratio(tiny_dir, tokenizer):
    allocation = DLPAllocationModifier(dlp_band=0.1)
    model = _run(_load(tiny_dir), tokenizer,
                 [allocation, WandaPruningModifier(sparsity=0.6, mask_structure="0:0", targets=[LAYERS])])
    profile = allocation.profile
    assert profile.method == "dlp" and profile.params["band"] == 0.1
    blocks = profile.block_sparsities()
    assert max(blocks.values()) - min(blocks.values()) == pytest.approx(0.2)
    assert profile.mean_sparsity() == pytest.approx(0.6, abs=1e-9)
    highest = max(profile.scores, key=profile.scores.get)  # highest median Wanda score -> most sparsity
    assert blocks[highest] == pytest.approx(max(blocks.values()))
    assert profile_mismatches(profile, measured_sparsities(model, profile)) == []


def test_atp_with_sparsegpt_rises_with_depth(tiny_dir, tokenizer):
    allocation = ATPAllocationModifier(atp_beta=0.04)
    model = _run(_load(tiny_dir), tokenizer,
                 [allocation, SparseGPTModifier(sparsity=0.5, mask_structure="0:0", targets=[LAYERS])])
    blocks = list(allocation.profile.block_sparsities().values())
    assert blocks == pytest.approx([0.44, 0.48, 0.52, 0.56])
    assert profile_mismatches(allocation.profile, measured_sparsities(model, allocation.profile)) == []


@pytest.mark.parametrize("kwargs, bad", [({"dlp_band": 0.7}, "band=0.7"), ({"granularity": "row"}, "granularity")])
def test_dlp_modifier_validates_its_fields(kwargs, bad):
    with pytest.raises((ValueError, ValidationError), match=bad):
        DLPAllocationModifier(**kwargs)


@pytest.mark.parametrize("beta", [float("nan"), 2.0])
def test_atp_modifier_validates_beta(beta):
    with pytest.raises((ValueError, ValidationError), match="beta="):
        ATPAllocationModifier(atp_beta=beta)


def test_saved_per_linear_profile_through_a_yaml_recipe(tiny_dir, tmp_path):
    """The route `owl tune` → best profile → recipe: per-linear ratios land on the right modules."""
    profile = allocate(_load(tiny_dir), 0.55, AlphaConfig(epsilon=0.4, granularity="linear"), progress=False)
    assert len(set(profile.sparsities.values())) > 4  # differs inside blocks
    saved = profile.save(tmp_path / "best")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("sparsity_stage:\n  sparsity_modifiers:\n"
                      f"    ProfileAllocationModifier: {{profile_file: '{saved}'}}\n"
                      '    WandaPruningModifier: {sparsity: 0.55, mask_structure: "0:0", '
                      'targets: ["re:model\\\\.layers\\\\.\\\\d+$"]}\n')
    result = prune(str(tiny_dir), recipe, tmp_path / "out", dataset="pydoc", num_samples=4, seq_len=64)
    assert result.profile.sparsities == profile.sparsities
    assert result.profile.method == "alpha" and result.profile.params["profile_file"] == str(saved)
    written = SparsityProfile.load(tmp_path / "out")
    assert written.sparsities == profile.sparsities
    pruned = _load(tmp_path / "out")
    assert profile_mismatches(profile, measured_sparsities(pruned, profile)) == []


def test_saved_profile_is_rescaled_to_the_pruner_target(tiny_dir, tokenizer, caplog):
    profile = allocate(_load(tiny_dir), 0.5, ATPConfig(beta=0.02), progress=False)
    path = profile.save(tiny_dir.parent / "atp.json")
    allocation = ProfileAllocationModifier(profile_file=str(path))
    _run(_load(tiny_dir), tokenizer,
         [allocation, WandaPruningModifier(sparsity=0.6, mask_structure="0:0", targets=[LAYERS])])
    assert allocation.profile.target == 0.6 and allocation.profile.mean_sparsity() == pytest.approx(0.6)
    assert "rescaling" in caplog.text


def test_saved_profile_errors(tiny_dir, tokenizer, tmp_path):
    with pytest.raises((ValueError, ValidationError), match="does not exist"):
        ProfileAllocationModifier(profile_file=str(tmp_path / "missing.json"))
    # a profile for another model (other sizes) is refused before any weight changes
    other = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                         num_attention_heads=4, vocab_size=128))
    path = allocate(other, 0.5, ATPConfig(), progress=False).save(tmp_path / "other.json")
    model = _load(tiny_dir)
    before = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    with pytest.raises(ValueError, match="written for another model"):
        _run(model, tokenizer, [ProfileAllocationModifier(profile_file=str(path)),
                                WandaPruningModifier(sparsity=0.5, mask_structure="0:0", targets=[LAYERS])])
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, before)
    # a profile that leaves out pruned modules is refused too
    pruner = WandaPruningModifier(sparsity=0.5, mask_structure="0:0", targets=[LAYERS])
    part = allocate(_load(tiny_dir), 0.5, ATPConfig(), progress=False)
    blocks = prunable_linears(_load(tiny_dir))
    first = next(iter(blocks["model.layers.0"]))
    modules = {n: m for n, m in part.modules.items() if n != first}
    mean = sum(m.sparsity * m.num_params for m in modules.values()) / sum(m.num_params for m in modules.values())
    path = SparsityProfile(method="atp", target=mean, modules=modules).save(tmp_path / "part.json")  # consistent
    with pytest.raises(ValueError, match="missing from it"):
        _run(_load(tiny_dir), tokenizer, [ProfileAllocationModifier(profile_file=str(path)), pruner])


def test_tune_proxy_masks_equal_llmcompressor_wanda_on_the_first_block(tiny_dir, tokenizer):
    """Faithfulness of the tuning proxy: block 0 sees the same (dense) inputs in both, so the masks agree."""
    from owl_plugin.statistics import collect_input_sq_means
    from owl_plugin.tuning.proxy import WandaProxy, dense_reference

    samples, seq_len = 4, 64
    data = calibration_dataset(tokenizer, "pydoc", num_samples=samples, seq_len=seq_len, seed=0)
    batches = [torch.tensor([ids]) for ids in data["input_ids"]]
    dense = _load(tiny_dir)
    stats = collect_input_sq_means(dense, batches, progress=False)
    linears = {n: m for g in prunable_linears(dense).values() for n, m in g.items()}
    proxy = WandaProxy(dense, linears, stats, batches[:1], dense_reference(dense, batches[:1], topk=4))
    proxy._apply({n: 0.5 for n in linears})
    pruned = _run(_load(tiny_dir), tokenizer,
                  [WandaPruningModifier(sparsity=0.5, mask_structure="0:0", targets=[LAYERS])],
                  samples=samples, seq_len=seq_len)
    theirs = dict(pruned.named_modules())
    for name in prunable_linears(dense)["model.layers.0"]:
        ours = linears[name].weight == 0
        agree = float((ours == (theirs[name].weight == 0)).float().mean())
        assert agree > 0.999, f"{name}: masks agree on {agree:.4%} of weights"
