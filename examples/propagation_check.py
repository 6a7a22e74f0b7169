"""Diagnostic: Wanda rows pruned with and without llmcompressor's error propagation.

llmcompressor's sequential pipeline (like Wanda's and OWL's reference loops) feeds each decoder
block the outputs of the blocks already pruned. ``oneshot(..., propagate_error=False)`` feeds each
block dense activations instead, as an implementation that gathers every block's statistics in
one whole-model pass would. This script runs ``benchmark_quality.py``'s rows (same recipes,
calibration draws from the second half of WikiText-2 validation, evaluation on 40×512 tokens of
the first half) with ``propagate_error=False`` and prints each draw against uniform:

    python examples/propagation_check.py --allocations uniform owl alpha --num-samples 64 --seeds 0 1 2

Measured 2026-11-24 (AVX-512 kernels, 64×512): uniform 451.27 / 489.52 / 459.32, OWL +6.2% median,
AlphaPruning −33.2% median; with propagation (the benchmark) uniform's median is 522 and OWL −23.5%.
``--propagate`` runs the same rows with propagation on, which reproduces the benchmark's rows.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_quality import run, split_halves  # noqa: E402  (a sibling script, not a package)

NO_PROPAGATION = ("import functools, llmcompressor\n"
                  "llmcompressor.oneshot = functools.partial(llmcompressor.oneshot, propagate_error=False)\n")


def main() -> None:
    from owl_plugin.paths import default_eval_text

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--allocations", nargs="+", choices=("uniform", "owl", "alpha", "dlp", "atp"),
                        default=["uniform", "owl", "alpha"])
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--propagate", action="store_true", help="keep llmcompressor's default (propagation on)")
    args = parser.parse_args()
    if "uniform" not in args.allocations:
        args.allocations.insert(0, "uniform")

    with tempfile.TemporaryDirectory(prefix="owl-propagation-") as tmp:
        work = Path(tmp)
        calibration, evaluation = split_halves(Path(default_eval_text()), work)  # the benchmark's split
        options = SimpleNamespace(dataset=calibration, text=evaluation,
                                  num_samples=args.num_samples, seq_len=512, eval_windows=40, eval_seq_len=512,
                                  nm_owl_lambda=None, statistics_samples=16)
        prelude = "" if args.propagate else NO_PROPAGATION
        ppl = {(a, s): run("wanda", a, args.sparsity, options, work, seed=s, prelude=prelude)["ppl"]
               for s in args.seeds for a in args.allocations}

    mode = "propagated (llmcompressor's default)" if args.propagate else "dense inputs (propagate_error=False)"
    print(f"\nWanda {args.sparsity:.0%}, {args.num_samples}×512 calibration, {mode}\n")
    print("| allocation | " + " | ".join(f"seed {s}" for s in args.seeds) + " | median vs uniform |")
    print("|---|" + "---|" * (len(args.seeds) + 1))
    for a in args.allocations:
        gains = [100 * (ppl[a, s] / ppl["uniform", s] - 1) for s in args.seeds]
        cells = [f"{ppl[a, s]:.2f}" + ("" if a == "uniform" else f" ({g:+.1f}%)")
                 for s, g in zip(args.seeds, gains, strict=True)]
        median = "–" if a == "uniform" else f"{statistics.median(gains):+.1f}%"
        print(f"| {a} | " + " | ".join(cells) + f" | {median} |")


if __name__ == "__main__":
    main()
