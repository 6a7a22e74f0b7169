"""Where OWL's outliers sit in a model, and whether the BOS token (the attention sink) makes them.

For each decoder block: OWL's layer outlier density (LOD, % of Wanda scores |W|·‖X‖ above M × their mean,
OWL §4.1) from activation statistics over all positions and over all positions but the first (the BOS in
BOS windows), the OWL ratios both give, the share of Σx² that the first position contributes at the block's
linears' inputs (the largest over its linears), and the ratio ATP gives the block (its depth ramp). Prints a
markdown table; the correlation of each allocation with depth closes it.

    python examples/analyze_outlier_depth.py --model gemma3-270m          # 16 × 512 BOS windows, draw 0

Calibration text: the second half of the WikiText-2 validation file, as ``benchmark_quality.py`` uses it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from owl_plugin.allocate import unit_ratios, unit_scores
from owl_plugin.config import ATPConfig, OWLConfig
from owl_plugin.layers import prunable_linears
from owl_plugin.models import load_model
from owl_plugin.statistics import collect_input_sq_means
from owl_plugin.text import calibration_batches, load_text, tokenize, window_protocol

TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext2-valid.tokens.txt"


def first_position_share(every: torch.Tensor, rest: torch.Tensor, windows: int, seq_len: int) -> float:
    """The first position's share of Σx² at one linear's input, from its mean x² over all positions (``every``)
    and over positions 1.. (``rest``) of ``windows`` windows of ``seq_len`` tokens."""
    return 1.0 - float(rest.double().sum()) * (seq_len - 1) / (float(every.double().sum()) * seq_len)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--text", default=str(TEXT))
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", type=float, default=0.7)
    parser.add_argument("--m", type=float, default=5.0, help="OWL's M")
    parser.add_argument("--lam", type=float, default=0.08, help="OWL's λ")
    parser.add_argument("--atp-beta", type=float, default=0.01)
    args = parser.parse_args(argv)
    model, tokenizer = load_model(args.model)
    model.eval()
    ids = tokenize(tokenizer, load_text(args.text))
    ids = ids[ids.numel() // 2:]  # calibration half, as benchmark_quality.py
    protocol = window_protocol(tokenizer, "auto")
    batches = calibration_batches(ids, num_samples=args.num_samples, seq_len=args.seq_len, seed=args.seed,
                                  bos_token_id=tokenizer.bos_token_id if protocol.bos else None)
    with torch.no_grad():
        all_positions = collect_input_sq_means(model, batches)
        without_first = collect_input_sq_means(model, batches, skip_first=1)
    blocks = prunable_linears(model)
    owl = OWLConfig(m=args.m, lam=args.lam)
    scores_all = unit_scores(blocks, owl, input_sq_means=all_positions, progress=False)
    scores_rest = unit_scores(blocks, owl, input_sq_means=without_first, progress=False)
    d_all, d_rest = np.array(list(scores_all.values())), np.array(list(scores_rest.values()))
    r_all = unit_ratios(blocks, owl, args.target, scores_all).ratios
    r_rest = unit_ratios(blocks, owl, args.target, scores_rest).ratios
    r_atp = unit_ratios(blocks, ATPConfig(beta=args.atp_beta), args.target, {}).ratios
    print(f"{args.model}, {protocol.describe()}; {args.num_samples} × {args.seq_len} windows, draw {args.seed}; "
          f"M={args.m}, λ={args.lam}, target {args.target:.0%}\n")
    print("| block | LOD, all positions (%) | LOD, first left out (%) | OWL ratio | OWL ratio, first left out "
          f"| first position's share of Σx² | ATP ratio (β={args.atp_beta}) |")
    print("|---|---|---|---|---|---|---|")
    for i, block in enumerate(blocks):
        first = max(first_position_share(all_positions[n], without_first[n], args.num_samples, args.seq_len)
                    for n in all_positions if n.startswith(f"{block}."))
        print(f"| {i} | {d_all[i]:.2f} | {d_rest[i]:.2f} | {r_all[i]:.3f} | {r_rest[i]:.3f} | {first:.3f} "
              f"| {r_atp[i]:.3f} |")
    depth = np.arange(len(blocks))
    print(f"\ncorrelation with depth: LOD {np.corrcoef(d_all, depth)[0, 1]:+.2f}, OWL ratios "
          f"{np.corrcoef(r_all, depth)[0, 1]:+.2f}, ATP ratios {np.corrcoef(r_atp, depth)[0, 1]:+.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
