"""Quality benchmark: uniform vs OWL vs AlphaPruning allocation for Wanda and SparseGPT.

Prunes the default model (SmolLM2-135M) through llmcompressor recipes at each sparsity,
evaluates WikiText-2 validation perplexity (first 40 windows of 512 tokens) and prints a
markdown table with the ratio to uniform of the same pruner and sparsity, wall time of the
pruning and the peak memory (RSS) of the process that pruned. Calibration comes from the
second half of the same WikiText-2 file, disjoint from the evaluation windows (or --dataset).

    python examples/benchmark_quality.py                       # 50/60/70%, all six rows each
    python examples/benchmark_quality.py --sparsities 0.7 --pruners wanda

Each configuration runs in its own process (clean llmcompressor session, honest peak memory).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from tqdm import tqdm

PRUNERS = {"wanda": "WandaPruningModifier", "sparsegpt": "SparseGPTModifier"}
ALLOCATIONS = {
    "uniform": None,
    "owl": "OWLAllocationModifier: {owl_m: 5, owl_lambda: 0.08}",
    "alpha": "AlphaAllocationModifier: {epsilon: 0.2}",
}

RUN_ONE = textwrap.dedent(
    """
    import json, resource, sys, time
    from owl_plugin.integrations.llmcompressor.prune import prune
    from owl_plugin.evaluation import perplexity
    from owl_plugin.models import load_model
    from owl_plugin.text import load_text, tokenize
    recipe, output, dataset, samples, seq_len, eval_text = sys.argv[1:7]
    start = time.perf_counter()
    result = prune("default", recipe, output, dataset=dataset, num_samples=int(samples), seq_len=int(seq_len),
                   overwrite=True)
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model, tokenizer = load_model(output)
    ppl = perplexity(model, tokenize(tokenizer, load_text(eval_text)), seq_len=512, max_windows=40, progress=False)
    print("RESULT " + json.dumps({"ppl": ppl, "seconds": seconds, "peak_mib": peak_mib,
                                  "measured": result.measured_sparsity}))
    """
)


def recipe_text(pruner: str, allocation: str, sparsity: float) -> str:
    lines = ["sparsity_stage:", "  sparsity_modifiers:"]
    if ALLOCATIONS[allocation]:
        lines.append(f"    {ALLOCATIONS[allocation]}")
    lines.append(
        f'    {PRUNERS[pruner]}: {{sparsity: {sparsity}, mask_structure: "0:0", '
        'targets: ["re:model\\\\.layers\\\\.\\\\d+$"]}'
    )
    return "\n".join(lines) + "\n"


def run(pruner: str, allocation: str, sparsity: float, args, work: Path) -> dict:
    recipe = work / f"{pruner}-{allocation}-{sparsity}.yaml"
    recipe.write_text(recipe_text(pruner, allocation, sparsity))
    output = work / recipe.stem
    proc = subprocess.run(
        [sys.executable, "-c", RUN_ONE, str(recipe), str(output), args.dataset, str(args.num_samples),
         str(args.seq_len), args.text],
        capture_output=True, text=True,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{recipe.stem} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    from owl_plugin.paths import default_eval_text

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.6, 0.7])
    parser.add_argument("--pruners", nargs="+", choices=tuple(PRUNERS), default=list(PRUNERS))
    parser.add_argument("--allocations", nargs="+", choices=tuple(ALLOCATIONS), default=list(ALLOCATIONS))
    parser.add_argument("--text", default=None, help="evaluation text (default: WikiText-2 validation)")
    parser.add_argument("--dataset", default=None, help="calibration text (default: second half of --text)")
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    args.text = str(args.text or default_eval_text())

    with tempfile.TemporaryDirectory(prefix="owl-bench-") as tmp:
        work = Path(tmp)
        if args.dataset is None:
            full = Path(args.text).read_text()
            args.dataset = str(work / "calibration.txt")
            Path(args.dataset).write_text(full[len(full) // 2:])  # disjoint from the evaluation windows
        jobs = [(p, a, s) for s in args.sparsities for p in args.pruners for a in args.allocations]
        rows = []
        for pruner, allocation, sparsity in tqdm(jobs, desc="prune + evaluate", unit="run"):
            rows.append({"pruner": pruner, "allocation": allocation, "sparsity": sparsity,
                         **run(pruner, allocation, sparsity, args, work)})

    print(f"\nSmolLM2-135M, WikiText-2 validation perplexity (40×512 tokens); calibration {args.num_samples}×{args.seq_len}"
          " tokens from the second half of the file\n")
    print("| sparsity | pruner | allocation | perplexity | vs uniform | measured sparsity | prune time (s) | time vs uniform | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = {(r["pruner"], r["sparsity"]): r for r in rows if r["allocation"] == "uniform"}
    for r in rows:
        ref = base.get((r["pruner"], r["sparsity"]))
        vs = f"{r['ppl'] / ref['ppl'] - 1:+.1%}" if ref else "–"
        tv = f"{r['seconds'] / ref['seconds']:.2f}×" if ref else "–"
        print(f"| {r['sparsity']:.0%} | {r['pruner']} | {r['allocation']} | {r['ppl']:.2f} | {vs} | "
              f"{r['measured']:.4f} | {r['seconds']:.0f} | {tv} | {r['peak_mib']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
