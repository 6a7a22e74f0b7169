"""``owl prune`` subcommand, registered with the ``owl`` CLI through the ``owl_plugin.cli`` entry point."""

from __future__ import annotations

import argparse

from owl_plugin.text import BOS_CHOICES, BOS_HELP


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "prune", help="prune with an llmcompressor recipe (OWL / AlphaPruning allocation modifiers)",
        description="Run llmcompressor.oneshot with a YAML recipe and save the pruned checkpoint, "
                    "its sparsity_profile.json, plot and recipe.",
    )
    parser.add_argument("--recipe", required=True, help="YAML recipe (stage → modifiers → Modifier)")
    parser.add_argument("--model", default="default", help="checkpoint folder, hub id, or 'default' (SmolLM2-135M)")
    parser.add_argument("--dataset", default="pydoc",
                        help="calibration text: local .txt/.json/.jsonl, 'pydoc' (default), "
                             "or hub NAME[:CONFIG][@SPLIT]")
    parser.add_argument("--num-samples", type=int, default=128, help="calibration windows (default 128)")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per window (default 512)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bos", choices=BOS_CHOICES, default="auto", help=BOS_HELP)
    parser.add_argument("--output", "-o", required=True, help="folder for the pruned checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--compare-uniform", action="store_true",
                        help="also prune a copy uniformly at the same target and report both perplexities on the "
                             "last 10%% of the calibration text, which is then held out of calibration (a second "
                             "prune; two copies of the model in memory)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from owl_plugin.integrations.llmcompressor.prune import prune

    result = prune(args.model, args.recipe, args.output, dataset=args.dataset, num_samples=args.num_samples,
                   seq_len=args.seq_len, seed=args.seed, overwrite=args.overwrite, bos=args.bos,
                   compare_uniform=args.compare_uniform)
    print(result.profile.summary())
    from owl_plugin.integrations.llmcompressor.prune import nm_summary

    if nm_summary(result.profile):
        print(nm_summary(result.profile))
    print(f"measured overall sparsity {result.measured_sparsity:.4f}; wrote {result.output}")
    if result.comparison is not None:
        print(result.comparison.summary())
    return 0
