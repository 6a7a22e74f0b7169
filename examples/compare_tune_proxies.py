r"""Do `owl tune`'s two proxies rank allocations alike, and does either rank them as the evaluation text does?

For each candidate profile (uniform, ATP at several β, OWL paper defaults) at one target sparsity:

- ``dense`` proxy (``owl tune`` default): Wanda masks from the dense model's statistics, KL(dense ‖ pruned)
  and perplexity on the held-out tail of the calibration text;
- ``sequential`` proxy (``owl tune --proxy sequential``): the masks llmcompressor's ``oneshot`` makes
  (block by block on the partly pruned model), same scores;
- evaluation perplexity with each proxy's masks on windows of the evaluation text (the first half of the
  file; calibration and held-out windows come from the second half, as ``benchmark_quality.py`` splits it).

The calibration split, held-out windows and BOS rule are ``owl tune``'s own (``split_calibration``).
Prints a markdown table; ``--json`` keeps the rows.

    OMP_NUM_THREADS=1 taskset -c 0 python examples/compare_tune_proxies.py --model gemma3-270m --sparsity 0.7 \
        --atp-beta 0.00427 0.01 0.015 0.02 0.025 --json proxies.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    import torch
    from tqdm.auto import tqdm

    from owl_plugin.allocate import allocate_linears
    from owl_plugin.config import make_config
    from owl_plugin.layers import prunable_linears
    from owl_plugin.models import load_model
    from owl_plugin.paths import default_eval_text
    from owl_plugin.statistics import collect_input_sq_means
    from owl_plugin.text import evaluation_windows, load_text, tokenize, window_protocol
    from owl_plugin.tuning.proxy import SequentialWandaProxy, WandaProxy, dense_reference
    from owl_plugin.tuning.search import TuneSettings, split_calibration

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="default (SmolLM2-135M), gemma3-270m or a folder")
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--atp-beta", type=float, nargs="*", default=[0.005, 0.01, 0.02], metavar="BETA")
    parser.add_argument("--text", default=None, help="text file (default: WikiText-2 validation)")
    parser.add_argument("--num-samples", type=int, default=32, help="calibration windows (owl tune's default)")
    parser.add_argument("--heldout-windows", type=int, default=8, help="held-out windows (owl tune's default)")
    parser.add_argument("--eval-windows", type=int, default=8, help="evaluation-text windows of 512 tokens")
    parser.add_argument("--bos", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args()

    model, tokenizer = load_model(args.model)
    model.eval()
    protocol = window_protocol(tokenizer, args.bos)
    full = load_text(args.text or default_eval_text())
    settings = TuneSettings(num_samples=args.num_samples, heldout_windows=args.heldout_windows)
    batches, heldout = split_calibration(tokenize(tokenizer, full[len(full) // 2:]), settings,
                                         bos_token_id=protocol.bos_token_id)
    evaluation = [torch.tensor([w]) for w in evaluation_windows(
        tokenize(tokenizer, full[: len(full) // 2]), seq_len=512, max_windows=args.eval_windows,
        bos_token_id=protocol.bos_token_id)]
    if len(evaluation) < args.eval_windows:
        raise SystemExit(f"--eval-windows {args.eval_windows}: the evaluation half holds {len(evaluation)}")
    blocks = prunable_linears(model)
    linears = {name: linear for group in blocks.values() for name, linear in group.items()}
    stats = collect_input_sq_means(model, batches)
    references = {"heldout": dense_reference(model, heldout), "evaluation": dense_reference(model, evaluation)}
    proxies = {"dense": WandaProxy(model, linears, stats, heldout, references["heldout"]),
               "sequential": SequentialWandaProxy(model, linears, batches, heldout, references["heldout"])}
    candidates = [("uniform", make_config("uniform"))]
    candidates += [(f"atp β={beta:g}", make_config("atp", beta=beta)) for beta in args.atp_beta]
    candidates += [("owl (M=5, λ=0.08)", make_config("owl"))]
    rows = []
    for label, config in tqdm(candidates, desc="candidates", unit="candidate"):
        start = time.perf_counter()
        profile = allocate_linears(blocks, args.sparsity, config, input_sq_means=stats, progress=False)
        row = {"candidate": label, "sparsity": args.sparsity}
        for kind, proxy in proxies.items():
            with proxy.pruned(profile):  # one set of masks, scored on both splits
                for split, scored in (("heldout", proxy), ("evaluation",
                                                           proxy.on_windows(evaluation, references["evaluation"]))):
                    score = scored.score_as_is()
                    row[f"{kind}_{split}_kl"], row[f"{kind}_{split}_ppl"] = score.kl, score.ppl
        row["seconds"] = time.perf_counter() - start
        rows.append(row)

    print(f"\n{args.model} at {args.sparsity:g}, Wanda masks; {protocol.describe()}; calibration "
          f"{args.num_samples}×512, held-out {args.heldout_windows}×512 (calibration half), evaluation "
          f"{args.eval_windows}×512 (other half). KL: held-out, per token, vs dense; % vs uniform.\n")
    uniform = rows[0]
    print("| candidate | KL dense proxy | KL sequential proxy | eval ppl, dense masks | eval ppl, oneshot masks |")
    print("|---|---|---|---|---|")
    for row in rows:
        cells = [f"{row[k]:.4f} ({row[k] / uniform[k] - 1:+.1%})" if "kl" in k else
                 f"{row[k]:.2f} ({row[k] / uniform[k] - 1:+.1%})"
                 for k in ("dense_heldout_kl", "sequential_heldout_kl", "dense_evaluation_ppl",
                           "sequential_evaluation_ppl")]
        print(f"| {row['candidate']} | " + " | ".join(cells) + " |")
    for kind in ("dense", "sequential"):
        best = min(rows, key=lambda r, k=kind: r[f"{k}_heldout_kl"])
        print(f"{kind} proxy picks: {best['candidate']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
