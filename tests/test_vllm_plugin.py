"""vLLM loads a compact (owl_sparse) checkpoint exactly like the dense one it came from.

The default real model (SmolLM2-135M) is pruned by magnitude to 50% per row (real zeros), saved
dense, and exported compact with owl_plugin.export. One subprocess in the vLLM venv
(``python -m owl_plugin.integrations.vllm.check``) then tries two corrupted copies of the compact
checkpoint (each must fail, naming the tensor), loads the dense and the compact one, and reports
greedy tokens and prompt log-probabilities. Measured: ~45 s of checkpoint writing plus ~2-3 min
for the vLLM process (each engine start is ~15-30 s in eager mode; more when the CPUs are busy).

vLLM lives in its own venv (``/work/main/.venv-vllm``, see ``integrations/vllm/__init__.py``);
these tests run from the main venv and skip when that venv is missing.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from owl_plugin.formats.compact_config import compressed_modules
from owl_plugin.profile import ModuleSparsity, SparsityProfile

REPO = Path(__file__).resolve().parent.parent
VLLM_PYTHON = Path(os.environ.get("OWL_VLLM_VENV", REPO / ".venv-vllm")) / "bin" / "python"
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Sparse neural networks are",
]
MAX_TOKENS = 16
# the sparse kernels sum each dot product in another order than oneDNN's dense GEMM, so fp32 log-probs
# agree to rounding, not bit for bit (measured: ≤ 2e-5); a wrong weight moves them by whole units
LOGPROB_ATOL = 1e-3
SPARSITY = 0.5
# left unpruned, so stored dense beside compressed siblings: half-compressed fused qkv_proj and gate_up_proj
# layers, and a plain unquantized o_proj
KEEP_DENSE = frozenset({"model.layers.1.self_attn.v_proj", "model.layers.2.mlp.up_proj",
                        "model.layers.4.self_attn.o_proj"})
# corrupted copies of the compact checkpoint: name → (tensor, edit or None to delete it, words the error must hold)
CORRUPTIONS = {
    "count": ("model.layers.3.self_attn.k_proj.weight_values", lambda values: values[:-1].clone(),  # fused qkv shard
              ("model.layers.3.self_attn.k_proj.weight", "marks 55296 non-zero", "holds 55295", "owl export")),
    "missing": ("model.layers.5.self_attn.o_proj.weight_bitmask", None,  # vLLM itself would load garbage silently
                ("model.layers.5.self_attn.o_proj.weight", "lacks ['weight_bitmask']", "owl export")),
}
SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "chat_template.jinja", "special_tokens_map.json")
TIMEOUT = 900  # seconds for the one vLLM subprocess (measured: well under half)

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.slow,
    # skipped only outside CI: `make test` builds the venv, so in CI a missing venv is a failure
    pytest.mark.skipif(not VLLM_PYTHON.exists() and not os.environ.get("CI"), reason=(
        f"the vLLM venv is missing ({VLLM_PYTHON}); build it with `make setup-vllm`")),
]


# -- checkpoints -------------------------------------------------------------------------------
def prune_rows(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Zero the ``floor(sparsity * in)`` smallest-magnitude entries of every row (a new tensor)."""
    pruned = weight.clone()
    count = math.floor(sparsity * weight.shape[1])
    smallest = weight.abs().argsort(dim=1, stable=True)[:, :count]
    return pruned.scatter_(1, smallest, 0.0)


def write_pruned_dense(source: Path, target: Path, *, sparsity: float = SPARSITY,
                       keep_dense: frozenset[str] = KEEP_DENSE) -> dict[str, int]:
    """Copy ``source`` with every 2-D weight in the decoder blocks magnitude-pruned per row.

    Args:
        keep_dense: modules left unpruned (and so stored dense in the compact export).

    Returns:
        Pruned module name → parameter count, in checkpoint order.
    """
    target.mkdir(parents=True)
    tensors, pruned = {}, {}
    with safe_open(source / "model.safetensors", framework="pt") as weights:
        for name in weights.keys():
            tensor = weights.get_tensor(name)
            module = name.removesuffix(".weight")
            if name.startswith("model.layers.") and name.endswith(".weight") and tensor.dim() == 2 \
                    and module not in keep_dense:
                tensor = prune_rows(tensor, sparsity)
                pruned[module] = tensor.numel()
            tensors[name] = tensor
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    for side in SIDE_FILES:
        if (source / side).is_file():
            shutil.copy2(source / side, target / side)
    return pruned


def write_compact(dense: Path, target: Path, pruned: dict[str, int], *, sparsity: float = SPARSITY) -> None:
    """Export ``dense`` compact with the project's exporter; exactly the ``pruned`` modules are compressed.

    The profile names them: the source model (de-quantized Q4_1) holds a few exact zeros in every
    weight, so without it the exporter would compress the unpruned ones too.
    """
    from owl_plugin.export import export_checkpoint

    modules = {module: ModuleSparsity(sparsity, numel, module.rsplit(".", 2)[0]) for module, numel in pruned.items()}
    profile = SparsityProfile(method="magnitude", target=sparsity, modules=modules)
    export_checkpoint(dense, target, format="compact", profile=profile)


def write_corrupted(compact: Path, target: Path, key: str, edit: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
    """Copy ``compact`` with the tensor ``key`` replaced by ``edit(tensor)``, or removed when ``edit`` is None."""
    shutil.copytree(compact, target)
    for path in sorted(target.glob("*.safetensors")):
        with safe_open(path, framework="pt") as weights:
            if key not in weights.keys():
                continue
            tensors = {name: weights.get_tensor(name) for name in weights.keys()}
        if edit is None:
            del tensors[key]
        else:
            tensors[key] = edit(tensors[key])
        save_file(tensors, path, metadata={"format": "pt"})
        return
    raise AssertionError(f"{key} not found in {compact}")


# -- the vLLM run --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, default_model_path: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("vllm")
    dense, compact = root / "dense", root / "compact"
    pruned = write_pruned_dense(default_model_path, dense)
    write_compact(dense, compact, pruned)
    corrupted = {}
    for name, (key, edit, _) in CORRUPTIONS.items():
        corrupted[name] = root / f"corrupted-{name}"
        write_corrupted(compact, corrupted[name], key, edit)
    return {"root": root, "dense": dense, "compact": compact, "corrupted": corrupted, "pruned": pruned}


@pytest.fixture(scope="module")
def vllm_report(checkpoints: dict) -> dict:
    """Run check.py once: the corrupted copies (must fail), then dense and compact, in one process."""
    out = checkpoints["root"] / "report.json"
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; vLLM's CPU default is far larger
    env.setdefault("VLLM_CACHE_ROOT", str(checkpoints["root"] / "vllm-cache"))
    command = [str(VLLM_PYTHON), "-m", "owl_plugin.integrations.vllm.check",
               "--model", str(checkpoints["dense"]), "--compare", str(checkpoints["compact"]),
               *(arg for path in checkpoints["corrupted"].values() for arg in ("--expect-failure", str(path))),
               "--atol", str(LOGPROB_ATOL), "--max-tokens", str(MAX_TOKENS), "--json", str(out), "--prompts", *PROMPTS]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    if result.returncode != 0:  # 1: outputs differ, 2: a load misbehaved; the tests below say which
        sys.stderr.write(result.stderr[-20000:])
    if not out.is_file():
        pytest.fail(f"check.py exited with {result.returncode} and wrote no report; its stderr is above")
    return json.loads(out.read_text())


def test_compact_checkpoint_is_compact(checkpoints: dict) -> None:
    config = json.loads((checkpoints["compact"] / "config.json").read_text())
    assert sorted(compressed_modules(config["quantization_config"])) == sorted(checkpoints["pruned"])
    names = set()
    for path in checkpoints["compact"].glob("*.safetensors"):
        with safe_open(path, framework="pt") as weights:
            names.update(weights.keys())
    assert all(f"{module}.weight" in names and f"{module}.weight_values" not in names for module in KEEP_DENSE)
    dense_bytes = sum(p.stat().st_size for p in checkpoints["dense"].glob("*.safetensors"))
    compact_bytes = sum(p.stat().st_size for p in checkpoints["compact"].glob("*.safetensors"))
    assert compact_bytes < dense_bytes


def test_vllm_greedy_tokens_match_dense(vllm_report: dict) -> None:
    dense, compact = vllm_report["runs"]
    assert compact["quantization"] == "owl_sparse" and dense["quantization"] is None
    for ours, theirs in zip(compact["outputs"], dense["outputs"], strict=True):
        assert len(ours["token_ids"]) == MAX_TOKENS or ours["finish_reason"] == "stop"
        assert ours["token_ids"] == theirs["token_ids"], f"greedy tokens differ for {ours['prompt']!r}"
        assert ours["text"] == theirs["text"]


def test_vllm_prompt_logprobs_match_dense(vllm_report: dict) -> None:
    dense, compact = vllm_report["runs"]
    for ours, theirs in zip(compact["outputs"], dense["outputs"], strict=True):
        assert ours["prompt_token_ids"] == theirs["prompt_token_ids"]
        diffs = [abs(a - b) for a, b in zip(ours["prompt_logprobs"][1:], theirs["prompt_logprobs"][1:], strict=True)]
        assert max(diffs) <= LOGPROB_ATOL, (ours["prompt"], diffs)
        assert all(isinstance(x, float) and math.isfinite(x) for x in ours["prompt_logprobs"][1:])
    assert vllm_report["comparison"]["identical"] is True


def test_vllm_runs_the_compact_checkpoint_on_the_sparse_kernels(vllm_report: dict, checkpoints: dict) -> None:
    dense, compact = vllm_report["runs"]
    assert dense["sparse"] == {"packed_layers": 0}
    fused = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj", "gate_proj": "gate_up_proj",
             "up_proj": "gate_up_proj"}  # vLLM's packed_modules_mapping for Llama
    layers = {name.rpartition(".")[0] + "." + fused.get(name.rpartition(".")[2], name.rpartition(".")[2])
              for name in checkpoints["pruned"]}
    assert compact["sparse"]["packed_layers"] == len(layers), compact["sparse"]
    assert compact["sparse"]["extension"] and compact["sparse"]["isa"] != "torch-fallback", compact["sparse"]


def test_vllm_refuses_corrupted_compact_naming_the_tensor(vllm_report: dict, checkpoints: dict) -> None:
    failures = {failure["model"]: failure for failure in vllm_report["failures"]}
    assert set(failures) == {str(path) for path in checkpoints["corrupted"].values()}
    for name, (_, _, words) in CORRUPTIONS.items():
        failure = failures[str(checkpoints["corrupted"][name])]
        assert failure["error_type"] == "CompactFormatError", failure
        for word in words:
            assert word in failure["error"], (name, failure["error"])


def test_vllm_keeps_vllms_dense_layers_where_the_kernel_measured_slower(vllm_report: dict, checkpoints: dict) -> None:
    """The load-time fallback (owl_plugin/kernels/fallback.py) in vLLM: with the floor raised so that every
    measured shape loses, no layer is packed, the measurements are reported, and greedy tokens stay dense's."""
    out = checkpoints["root"] / "fallback.json"
    env = dict(os.environ, OWL_SPARSE_FALLBACK="always", OWL_SPARSE_MIN_SPEEDUP="1e9")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    env.setdefault("VLLM_CACHE_ROOT", str(checkpoints["root"] / "vllm-cache"))
    command = [str(VLLM_PYTHON), "-m", "owl_plugin.integrations.vllm.check", "--model", str(checkpoints["compact"]),
               "--max-tokens", str(MAX_TOKENS), "--json", str(out), "--prompts", *PROMPTS]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert out.is_file(), result.stderr[-5000:]
    (run,) = json.loads(out.read_text())["runs"]
    assert run["quantization"] == "owl_sparse" and run["sparse"]["packed_layers"] == 0, run["sparse"]
    kept = run["sparse"]["dense_fallback"]
    assert kept and all(d["speedup"] < 1e9 and d["dense_s"] > 0 and d["sparse_s"] > 0 for d in kept), kept
    assert "stay dense: the sparse kernel ran at" in result.stderr
    dense = vllm_report["runs"][0]
    assert [o["token_ids"] for o in run["outputs"]] == [o["token_ids"] for o in dense["outputs"]]


def write_lora_adapter(folder: Path, base: Path, *, rank: int = 8, seed: int = 0) -> Path:
    """A PEFT LoRA adapter with random A and B (B is zero in a fresh PEFT adapter: it would change nothing)
    on q_proj and v_proj (one fused qkv_proj in vLLM) and down_proj (a row-parallel linear)."""
    config = json.loads((base / "config.json").read_text())
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    kv = config["num_key_value_heads"] * hidden // config["num_attention_heads"]
    shapes = {"self_attn.q_proj": (hidden, hidden), "self_attn.v_proj": (kv, hidden), "mlp.down_proj": (hidden, inter)}
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for name, (out_features, in_features) in shapes.items():
            prefix = f"base_model.model.model.layers.{layer}.{name}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, in_features, generator=generator) * 0.05
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_features, rank, generator=generator) * 0.05
    folder.mkdir(parents=True)
    save_file(tensors, folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank, "bias": "none",
        "target_modules": ["q_proj", "v_proj", "down_proj"], "base_model_name_or_path": str(base)}))
    return folder


def test_vllm_serves_a_lora_adapter_over_the_compact_checkpoint(vllm_report: dict, checkpoints: dict) -> None:
    """``enable_lora``: vLLM's LoRA wrappers take the packed layers (which hold no dense ``weight``), the
    adapter's greedy tokens over the compact base equal those over the dense base, and the base still
    runs on the sparse kernels."""
    adapter = write_lora_adapter(checkpoints["root"] / "adapter", checkpoints["dense"])
    out = checkpoints["root"] / "lora.json"
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    env.setdefault("VLLM_CACHE_ROOT", str(checkpoints["root"] / "vllm-cache"))
    command = [str(VLLM_PYTHON), "-m", "owl_plugin.integrations.vllm.check", "--model", str(checkpoints["dense"]),
               "--compare", str(checkpoints["compact"]), "--lora", str(adapter), "--atol", str(LOGPROB_ATOL),
               "--max-tokens", str(MAX_TOKENS), "--json", str(out), "--prompts", *PROMPTS]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert out.is_file(), result.stderr[-5000:]
    report = json.loads(out.read_text())
    assert not report["failures"], report["failures"]
    dense, compact = report["runs"]
    assert report["comparison"]["identical"] is True, report["comparison"]
    assert compact["quantization"] == "owl_sparse"
    assert compact["sparse"]["packed_layers"] == vllm_report["runs"][1]["sparse"]["packed_layers"], compact["sparse"]
    without = [o["token_ids"] for o in vllm_report["runs"][0]["outputs"]]
    assert [o["token_ids"] for o in dense["outputs"]] != without  # the adapter was applied
