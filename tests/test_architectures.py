"""Every supported decoder architecture end to end on a tiny random model: profile, prune, compact export, reload.

Each model is built from transformers' own config class (2 blocks, hidden 256: wide enough that
rounding a ratio to whole weights per row stays under 0.5%), saved with ``save_pretrained`` and
the default model's tokenizer. For each one: ``owl profile`` covers
100% of the decoder's prunable parameters with every method (and alpha runs on a folder with
no tokenizer files), ``owl prune`` with an OWL + Wanda recipe reaches the target within 0.5%,
and the compact export reloads bit-identical in transformers. MoE models whose experts are
fused 3-D parameters (transformers 5's Qwen3-MoE, Mixtral) are refused by name with exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from compact_helpers import same_bits
from transformers import AutoModelForCausalLM

from owl_plugin.cli import main

COMMON = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256)
DENSE = {
    "llama": ("LlamaConfig", {}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", {"head_dim": 64}),
    "mistral": ("MistralConfig", {"sliding_window": 16}),
    "gemma2": ("Gemma2Config", {"head_dim": 64, "sliding_window": 16}),  # soft-capping, extra norms
    "gemma3": ("Gemma3TextConfig", {"head_dim": 64, "sliding_window": 16}),  # 0-dim tensors, sliding layers
    "phi3": ("Phi3Config", {}),  # fused qkv_proj and gate_up_proj
}
MOE = {
    "qwen3_moe": ("Qwen3MoeConfig", {"head_dim": 64, "moe_intermediate_size": 128, "num_experts": 4,
                                     "num_experts_per_tok": 2}),
    "mixtral": ("MixtralConfig", {"num_local_experts": 4, "num_experts_per_tok": 2}),
}
TARGET = 0.5
RECIPE = """sparsity_stage:
  sparsity_modifiers:
    OWLAllocationModifier: {owl_m: 5, owl_lambda: 0.08}
    WandaPruningModifier: {sparsity: %s, mask_structure: "0:0", targets: ["re:model\\\\.layers\\\\.\\\\d+$"]}
"""


def build(folder: Path, arch: str, vocab_size: int, tokenizer=None) -> Path:
    """Save a seeded tiny random model of ``arch`` (and the tokenizer, if given) to ``folder``."""
    config_class, extra = {**DENSE, **MOE}[arch]
    special = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    config = getattr(transformers, config_class)(**COMMON, **extra, vocab_size=vocab_size, **special)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=list(DENSE))
def dense_dir(request, tmp_path_factory, tokenizer) -> tuple[str, Path]:
    return request.param, build(tmp_path_factory.mktemp(request.param) / "model", request.param, len(tokenizer),
                                tokenizer)


def _profile(folder: Path, method: str, output: Path, capsys) -> dict:
    code = main(["profile", str(folder), "--method", method, "--sparsity", str(TARGET), "--output", str(output),
                 "--num-samples", "4", "--seq-len", "32"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "covers 100.00% of the decoder's prunable parameters" in out
    return json.loads((output / "sparsity_profile.json").read_text())


@pytest.mark.parametrize("method", ["uniform", "owl", "alpha"])
def test_profile_covers_every_prunable_decoder_parameter(dense_dir, method, tmp_path, capsys) -> None:
    arch, folder = dense_dir
    profile = _profile(folder, method, tmp_path / "profile", capsys)
    coverage = profile["params"]["coverage"]
    assert coverage["share"] == 1.0 and coverage["uncovered"] == {}, (arch, coverage)
    assert coverage["covered_params"] == sum(m["num_params"] for m in profile["modules"].values())
    assert abs(profile["mean_sparsity"] - TARGET) < 1e-6


def test_alpha_profile_needs_no_tokenizer_files(dense_dir, tmp_path, capsys) -> None:
    arch, _ = dense_dir
    bare = build(tmp_path / "bare", arch, vocab_size=512)  # weights and config only
    assert not list(bare.glob("tokenizer*"))
    _profile(bare, "alpha", tmp_path / "profile", capsys)


def test_prune_export_compact_reloads_bit_identical(dense_dir, tmp_path, capsys) -> None:
    arch, folder = dense_dir
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE % TARGET)
    pruned = tmp_path / "pruned"
    code = main(["prune", "--model", str(folder), "--recipe", str(recipe), "--output", str(pruned),
                 "--num-samples", "4", "--seq-len", "32"])
    out = capsys.readouterr().out
    assert code == 0, out
    measured = float(out.split("measured overall sparsity ")[1].split(";")[0])
    assert abs(measured - TARGET) <= 0.005, (arch, measured)
    assert json.loads((pruned / "sparsity_profile.json").read_text())["params"]["coverage"]["share"] == 1.0

    compact = tmp_path / "compact"
    assert main(["export", str(pruned), "--format", "compact", "--output", str(compact)]) == 0
    reference = AutoModelForCausalLM.from_pretrained(pruned, dtype=torch.float32).state_dict()
    loaded = AutoModelForCausalLM.from_pretrained(compact, dtype=torch.float32).state_dict()
    assert set(loaded) == set(reference), arch
    different = [name for name, tensor in reference.items() if not same_bits(loaded[name], tensor)]
    assert not different, (arch, different[:5])


@pytest.mark.parametrize("arch", list(MOE))
@pytest.mark.parametrize("command", ["profile", "prune"])
def test_fused_moe_experts_are_refused_by_name(arch, command, tmp_path, tokenizer, capsys) -> None:
    folder = build(tmp_path / arch, arch, len(tokenizer), tokenizer)
    if command == "profile":
        argv = ["profile", str(folder), "--method", "alpha", "--sparsity", "0.5", "--output", str(tmp_path / "p")]
    else:
        (tmp_path / "recipe.yaml").write_text(RECIPE % TARGET)
        argv = ["prune", "--model", str(folder), "--recipe", str(tmp_path / "recipe.yaml"),
                "--output", str(tmp_path / "pruned"), "--num-samples", "2", "--seq-len", "16"]
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if f"owl {command}: error:" in line]
    assert len(errors) == 1, errors  # one line (progress bars of loading share stderr)
    error = errors[0]
    expected = {"qwen3_moe": "Qwen3MoeForCausalLM", "mixtral": "MixtralForCausalLM"}[arch]
    assert f"{expected} is not supported" in error
    assert "model.layers.N.mlp.experts.gate_up_proj" in error and "model.layers.N.mlp.experts.down_proj" in error
    assert not (tmp_path / "p").exists() and not (tmp_path / "pruned").exists()
