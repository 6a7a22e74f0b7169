"""Every supported decoder architecture end to end on a tiny random model: profile, prune, compact export, reload.

Each model is built from transformers' own config class (2 blocks, hidden 256: wide enough that
rounding a ratio to whole weights per row stays under 0.5%), saved with ``save_pretrained`` and
the default model's tokenizer. For each one: ``owl profile`` covers
100% of the decoder's prunable parameters with every method (and alpha runs on a folder with
no tokenizer files), ``owl prune`` with an OWL + Wanda recipe reaches the target within 0.5%,
and the compact export reloads bit-identical in transformers.

MoE models (transformers 5 fuses Qwen3-MoE's and Mixtral's experts into 3-D parameters) are allocated
and pruned per expert (``owl_plugin.experts``): every expert matrix is a unit, the router never is,
unrouted experts follow the stated rule and are named, and the pruned checkpoint keeps the family's
layout and reaches the target, and its compact export reloads bit-identical in transformers (which
fuses the experts again). Experts with biases (gpt-oss) are refused by name with exit 2.
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


# -- mixture of experts: transformers 5 fuses the experts into 3-D parameters; each expert is allocated and pruned --

BLOCKS, EXPERTS, TOP_K = COMMON["num_hidden_layers"], 4, 2
PROJECTIONS = {"qwen3_moe": ("gate_proj", "up_proj", "down_proj"), "mixtral": ("w1", "w3", "w2")}
EXPERT_PREFIX = {"qwen3_moe": "mlp.experts", "mixtral": "block_sparse_moe.experts"}
RECIPE_PER_EXPERT = """sparsity_stage:
  sparsity_modifiers:
    OWLAllocationModifier: {owl_m: 5, owl_lambda: 0.08, granularity: expert}
    WandaPruningModifier: {sparsity: %s, mask_structure: "0:0", targets: ["re:model\\\\.layers\\\\.\\\\d+$"]}
"""


@pytest.fixture(scope="module", params=list(MOE))
def moe_dir(request, tmp_path_factory, tokenizer) -> tuple[str, Path]:
    return request.param, build(tmp_path_factory.mktemp(request.param) / "model", request.param, len(tokenizer),
                                tokenizer)


def _experts(block: int) -> list[str]:
    return [f"model.layers.{block}.mlp.experts.{e}" for e in range(EXPERTS)]


@pytest.mark.parametrize("method, granularity", [("uniform", None), ("owl", None), ("owl", "expert"),
                                                 ("alpha", "expert"), ("alpha", "linear")])
def test_moe_profile_allocates_every_expert_matrix(moe_dir, method, granularity, tmp_path, capsys) -> None:
    arch, folder = moe_dir
    extra = ["--granularity", granularity] if granularity else []
    code = main(["profile", str(folder), "--method", method, "--sparsity", str(TARGET), "--output",
                 str(tmp_path / "p"), "--num-samples", "4", "--seq-len", "32", *extra])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "covers 100.00% of the decoder's prunable parameters" in out
    profile = json.loads((tmp_path / "p" / "sparsity_profile.json").read_text())
    coverage = profile["params"]["coverage"]
    assert coverage["share"] == 1.0 and coverage["uncovered"] == {}, (arch, coverage)
    modules = profile["modules"]
    expert_matrices = [f"{e}.{p}" for b in range(BLOCKS) for e in _experts(b) for p in ("gate_proj", "up_proj",
                                                                                       "down_proj")]
    assert set(expert_matrices) <= set(modules)  # every expert's three matrices, in memory names
    assert len(modules) == BLOCKS * (4 + EXPERTS * 3)  # + q, k, v, o; the router is never a unit
    assert not any(name.endswith(".gate") for name in modules)
    assert coverage["covered_params"] == sum(m["num_params"] for m in modules.values())
    assert abs(profile["mean_sparsity"] - TARGET) < 1e-6
    assert (tmp_path / "p" / "sparsity_experts.png").stat().st_size > 0  # the per-expert heat map
    if granularity == "expert":  # one ratio per expert (its three matrices), experts of a block differ
        for block in range(BLOCKS):
            ratios = [{modules[f"{e}.{p}"]["sparsity"] for p in ("gate_proj", "up_proj", "down_proj")}
                      for e in _experts(block)]
            assert all(len(r) == 1 for r in ratios), ratios
            assert len({r.pop() for r in ratios}) > 1, (arch, block)
            assert all(e in profile["scores"] for e in _experts(block))
    if granularity == "linear":  # α of each expert matrix on its own 2-D weight
        assert len({modules[m]["sparsity"] for m in expert_matrices}) > len(expert_matrices) // 2


def test_moe_unrouted_experts_get_their_kinds_mean_score_and_are_named(moe_dir, tmp_path) -> None:
    from owl_plugin.allocate import allocate
    from owl_plugin.config import OWLConfig
    from owl_plugin.experts import UNROUTED_RULE
    from owl_plugin.plot_experts import expert_ratios, plot_expert_ratios

    arch, folder = moe_dir
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    fused_class = type(model.model.layers[0].mlp.experts)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    one_token = [torch.tensor([[5]])]  # routed to exactly TOP_K of the EXPERTS in each block
    profile = allocate(model, TARGET, OWLConfig(granularity="expert"), calibration=one_token, progress=False)
    unrouted = profile.params["unrouted_experts"]
    assert unrouted["rule"] == UNROUTED_RULE
    assert len(unrouted["modules"]) == BLOCKS * (EXPERTS - TOP_K) * 3, unrouted["modules"]
    for block in range(BLOCKS):
        idle = {e for e in _experts(block) if f"{e}.up_proj" in unrouted["modules"]}
        routed = [profile.scores[e] for e in _experts(block) if e not in idle]
        assert len(idle) == EXPERTS - TOP_K
        for expert in idle:  # the stated rule: the mean score of the block's routed experts
            assert profile.scores[expert] == pytest.approx(sum(routed) / len(routed))
    assert abs(profile.mean_sparsity() - TARGET) < 1e-6
    ratios = expert_ratios(profile)  # what the heat map draws: blocks × experts
    assert list(ratios) == [f"model.layers.{b}" for b in range(BLOCKS)]
    expert_3 = profile.modules["model.layers.1.mlp.experts.3.down_proj"].sparsity  # one ratio per expert
    assert ratios["model.layers.1"][3] == pytest.approx(expert_3)
    assert plot_expert_ratios(profile, tmp_path / "experts.png").stat().st_size > 0
    assert type(model.model.layers[0].mlp.experts) is fused_class  # the fused modules are back
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _checkpoint(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


@pytest.mark.parametrize("recipe", [RECIPE, RECIPE_PER_EXPERT], ids=["block", "expert"])
def test_moe_prune_reaches_the_target_on_the_saved_checkpoint(moe_dir, recipe, tmp_path, capsys) -> None:
    arch, folder = moe_dir
    (tmp_path / "recipe.yaml").write_text(recipe % TARGET)
    pruned = tmp_path / "pruned"
    code = main(["prune", "--model", str(folder), "--recipe", str(tmp_path / "recipe.yaml"), "--output", str(pruned),
                 "--num-samples", "4", "--seq-len", "32"])
    out = capsys.readouterr().out
    assert code == 0, out
    saved = _checkpoint(pruned)
    prefix, projections = EXPERT_PREFIX[arch], PROJECTIONS[arch]
    experts = [f"model.layers.{b}.{prefix}.{e}.{p}.weight" for b in range(BLOCKS) for e in range(EXPERTS)
               for p in projections]
    assert set(experts) <= set(saved), arch  # the family's own per-expert layout, as transformers writes it
    routers = [k for k in saved if k.endswith(".gate.weight")]
    assert len(routers) == BLOCKS and all(int((saved[k] == 0).sum()) == 0 for k in routers)  # never pruned
    decoder = {k: t for k, t in saved.items() if ".layers." in k and t.dim() == 2 and k not in routers}
    measured = sum(int((t == 0).sum()) for t in decoder.values()) / sum(t.numel() for t in decoder.values())
    assert abs(measured - TARGET) <= 0.005, (arch, measured)
    assert all(0.3 < float((saved[k] == 0).float().mean()) < 0.7 for k in experts)
    profile = json.loads((pruned / "sparsity_profile.json").read_text())
    assert profile["params"]["coverage"]["share"] == 1.0
    assert {f"{m}.weight" for m in profile["modules"]} == set(decoder)  # named as the checkpoint's tensors
    if recipe is RECIPE_PER_EXPERT:
        ratios = {profile["modules"][f"model.layers.0.{prefix}.{e}.{projections[0]}"]["sparsity"]
                  for e in range(EXPERTS)}
        assert len(ratios) > 1, ratios

    reloaded = AutoModelForCausalLM.from_pretrained(pruned, dtype=torch.float32)  # fused again, same bits
    fused = reloaded.model.layers[1].mlp.experts
    gate, up, down = (saved[f"model.layers.1.{prefix}.3.{p}.weight"] for p in projections)
    assert same_bits(fused.gate_up_proj[3], torch.cat([gate, up])) and same_bits(fused.down_proj[3], down)


def test_moe_compact_export_reloads_bit_identical(moe_dir, tmp_path, capsys, monkeypatch) -> None:
    """Per-expert compressed tensors are decompressed before transformers fuses the experts; the reloaded model
    equals the dense pruned one bit for bit and saves back to the family's per-expert layout. Its fused experts are
    packed (``OWL_SPARSE_MOE=0`` keeps them dense) and compute what the dense ones do."""
    arch, folder = moe_dir
    (tmp_path / "recipe.yaml").write_text(RECIPE_PER_EXPERT % TARGET)
    pruned, compact = tmp_path / "pruned", tmp_path / "compact"
    assert main(["prune", "--model", str(folder), "--recipe", str(tmp_path / "recipe.yaml"), "--output",
                 str(pruned), "--num-samples", "2", "--seq-len", "16"]) == 0
    assert main(["export", str(pruned), "--format", "compact", "--output", str(compact)]) == 0
    capsys.readouterr()
    config = json.loads((compact / "config.json").read_text())
    compressed = config["quantization_config"]["compressed_modules"]
    expert_prefix = f"model.layers.0.{EXPERT_PREFIX[arch]}."
    assert sum(m.startswith(expert_prefix) for m in compressed) == EXPERTS * 3, compressed
    reference = AutoModelForCausalLM.from_pretrained(pruned, dtype=torch.float32).state_dict()
    model = AutoModelForCausalLM.from_pretrained(compact, dtype=torch.float32)
    loaded = model.state_dict()
    assert set(loaded) == set(reference), arch
    different = [name for name, tensor in reference.items() if not same_bits(loaded[name], tensor)]
    assert not different, (arch, different[:5])
    assert "mlp.experts.gate_up_proj" in " ".join(loaded)  # the fused layout's names (packed in memory)
    model.save_pretrained(tmp_path / "resaved")
    assert set(_checkpoint(tmp_path / "resaved")) == set(_checkpoint(pruned))
    # loaded in another dtype than stored (fp32 here): the fused experts too, as the dense checkpoint loads
    half = AutoModelForCausalLM.from_pretrained(compact, dtype=torch.bfloat16).state_dict()
    half_reference = AutoModelForCausalLM.from_pretrained(pruned, dtype=torch.bfloat16).state_dict()
    assert {str(t.dtype) for t in half.values()} == {"torch.bfloat16"}, arch
    assert not [name for name, tensor in half_reference.items() if not same_bits(half[name], tensor)], arch
    monkeypatch.setenv("OWL_SPARSE_MOE", "0")
    unpacked = AutoModelForCausalLM.from_pretrained(compact, dtype=torch.float32)
    fused = [name for name, module in unpacked.named_modules() if isinstance(getattr(module, "gate_up_proj", None),
                                                                              torch.nn.Parameter)]
    assert fused and all(type(model.get_submodule(name)).__name__ == "OwlSparseExperts" for name in fused), arch
    assert not [name for name, _ in model.named_parameters() if name.endswith(("gate_up_proj", "down_proj"))]
    tokens = torch.randint(3, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = unpacked(tokens).logits, model(tokens).logits
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item()), arch
    # .to(dtype) converts the packed experts the kernels read too (rebuilt from the converted buffers)
    model.to(torch.bfloat16)
    unpacked.to(torch.bfloat16)
    assert {m.dtype for m in model.get_submodule(fused[0]).owl_packed_experts} == {torch.bfloat16}, arch
    with torch.no_grad():
        expected, got = unpacked(tokens).logits.float(), model(tokens).logits.float()
    assert ((got - expected).norm() / expected.norm()).item() < 2e-2, arch


def test_experts_with_biases_are_refused_by_name(tmp_path, tokenizer, capsys) -> None:
    """gpt-oss keeps biased experts with a clamped gating the per-expert linears do not reproduce: exit 2, by name."""
    config = transformers.GptOssConfig(**{**COMMON, "intermediate_size": 128}, head_dim=64, num_local_experts=4,
                                       num_experts_per_tok=2, vocab_size=len(tokenizer), sliding_window=16,
                                       layer_types=["sliding_attention", "full_attention"])
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "gpt_oss")
    argv = ["profile", str(tmp_path / "gpt_oss"), "--method", "alpha", "--sparsity", "0.5", "--output",
            str(tmp_path / "p")]
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "owl profile: error:" in line]
    assert len(errors) == 1, errors
    assert "GptOssForCausalLM is not supported" in errors[0] and "experts with biases" in errors[0]
    assert "model.layers.N.mlp.experts.gate_up_proj" in errors[0]
    assert not (tmp_path / "p").exists()


def test_only_pruned_fused_experts_are_packed(tokenizer, tmp_path) -> None:
    """A profile may leave the experts dense: fused experts without zeros stay transformers' own module."""
    from owl_plugin.integrations.transformers.sparse_experts import swap_in_sparse_experts

    model = AutoModelForCausalLM.from_pretrained(build(tmp_path / "moe", "qwen3_moe", len(tokenizer)),
                                                 dtype=torch.float32)
    assert swap_in_sparse_experts(model) == []  # random weights: no zeros
    experts = model.model.layers[1].mlp.experts
    with torch.no_grad():
        for weight in (experts.gate_up_proj, experts.down_proj):
            weight.mul_(torch.rand(weight.shape, generator=torch.Generator().manual_seed(0)) >= 0.5)
    assert swap_in_sparse_experts(model) == ["model.layers.1.mlp.experts"]
    assert type(model.model.layers[1].mlp.experts).__name__ == "OwlSparseExperts"
