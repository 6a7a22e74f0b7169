"""``owl validate PRUNED_DIR --baseline DENSE_DIR --engines transformers,vllm,openvino [--report out/]``.

Registered in ``owl_plugin/cli.py`` through :func:`register`. Exit status: 0 when every check of
every engine passed and every ``--min-speedup`` was met, 1 when anything failed (the report says
what, with the engine's own error), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from owl_plugin.text import BOS_CHOICES, BOS_HELP
from owl_plugin.validation.engines import ENGINES, parse_engines, parse_pairs
from owl_plugin.validation.protocol import ServeSettings, SpeedSettings, Tolerances
from owl_plugin.validation.suite import DEFAULT_PROMPTS, DEFAULT_TIMEOUT, ValidationOptions

logger = logging.getLogger(__name__)


def register(sub) -> None:
    """Add the ``validate`` subcommand to the ``owl`` parser's subparsers."""
    parser = sub.add_parser(
        "validate", help="check a pruned checkpoint in real engines: loads, agrees, speeds up, serves",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="For each engine (in its own venv, as a subprocess with a time limit): the dense and the compact "
                    "export load and their weights match sparsity_profile.json; greedy generation and perplexity "
                    "agree with transformers; dense baseline and pruned are timed side by side; optionally "
                    "`vllm serve` of the compact checkpoint answers concurrent requests. Writes report.json, "
                    "report.md and report.png; exits non-zero when anything fails.",
        epilog="engines: " + ", ".join(f"{e.name} ({e.venv}, {e.setup})" for e in ENGINES.values()),
    )
    parser.add_argument("pruned", metavar="PRUNED_DIR", help="pruned checkpoint (dense tensors with zeros) with "
                                                             "sparsity_profile.json, e.g. the output of `owl prune`")
    parser.add_argument("--baseline", metavar="DENSE_DIR", default=None,
                        help="the dense model before pruning (speed baseline); 'default' = SmolLM2-135M")
    parser.add_argument("--engines", default="transformers", help="comma-separated: transformers,vllm,openvino "
                                                                   "(transformers, the reference, always runs)")
    parser.add_argument("--report", default="owl-validate", metavar="DIR",
                        help="report folder (default ./owl-validate)")
    parser.add_argument("--venv", action="append", default=[], metavar="ENGINE=PATH",
                        help="use an existing venv (folder or its python) for ENGINE; repeatable")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help=f"time limit per engine runner (default {DEFAULT_TIMEOUT:.0f})")
    parser.add_argument("--engine-timeout", action="append", default=[], metavar="ENGINE=SECONDS",
                        help="time limit for one engine; repeatable")
    agree = parser.add_argument_group("agreement")
    agree.add_argument("--prompts", nargs="+", default=list(DEFAULT_PROMPTS), help="greedy prompts (default: four)")
    agree.add_argument("--max-new-tokens", type=int, default=32, help="greedy tokens per prompt (default 32)")
    agree.add_argument("--text", default=None, help="perplexity text: file, 'pydoc' or hub NAME[:CONFIG][@SPLIT] "
                                                    "(default: ../shared/data/wikitext2-valid.tokens.txt)")
    agree.add_argument("--ppl-windows", type=int, default=8, help="perplexity windows (default 8)")
    agree.add_argument("--seq-len", type=int, default=512, help="perplexity window length (default 512)")
    agree.add_argument("--bos", choices=BOS_CHOICES, default="auto", help=BOS_HELP)
    agree.add_argument("--ppl-tolerance", type=float, default=Tolerances.ppl_rel,
                       help=f"relative perplexity tolerance for fp32 (default {Tolerances.ppl_rel})")
    agree.add_argument("--ppl-tolerance-lowp", type=float, default=Tolerances.ppl_rel_lowp,
                       help=f"relative perplexity tolerance for bf16/int8 variants (default {Tolerances.ppl_rel_lowp})")
    agree.add_argument("--greedy-min-prefix", type=float, default=Tolerances.greedy_lowp_min_prefix,
                       help="bf16/int8: fraction of each greedy generation that must match before the first "
                            f"divergence (default {Tolerances.greedy_lowp_min_prefix})")
    speed = parser.add_argument_group("speed (needs --baseline)")
    speed.add_argument("--no-speed", action="store_true", help="skip the speed measurements")
    speed.add_argument("--repetitions", type=int, default=5, help="interleaved repetitions (default 5)")
    speed.add_argument("--prefill-tokens", type=int, default=512, help="prefill prompt length (default 512)")
    speed.add_argument("--decode-tokens", type=int, default=64, help="tokens per decode measurement (default 64)")
    speed.add_argument("--batch", type=int, default=8, help="throughput batch size (default 8)")
    speed.add_argument("--min-speedup", action="append", default=[], metavar="ENGINE=X",
                       help="fail unless ENGINE's decode tok/s speed-up (pruned / dense) is at least X; repeatable")
    serve = parser.add_argument_group("serving under load (vLLM)")
    serve.add_argument("--serve", action="store_true",
                       help="start `vllm serve` (api_server, loopback) for the compact and the dense checkpoint and "
                            "send concurrent completion requests to each")
    serve.add_argument("--serve-requests", type=int, default=64, help="requests per server (default 64)")
    serve.add_argument("--serve-concurrency", type=int, default=64, help="requests in flight (default 64)")
    parser.set_defaults(func=run)


def options_from_args(args: argparse.Namespace) -> ValidationOptions:
    from owl_plugin.models import resolve_model

    speed = None if args.no_speed or args.baseline is None else SpeedSettings(
        repetitions=args.repetitions, prefill_tokens=args.prefill_tokens, decode_tokens=args.decode_tokens,
        batch=args.batch)
    serve = ServeSettings(requests=args.serve_requests, concurrency=args.serve_concurrency) if args.serve else None
    return ValidationOptions(
        pruned=Path(args.pruned), report_dir=Path(args.report), engines=parse_engines(args.engines),
        baseline=Path(resolve_model(args.baseline)) if args.baseline else None, prompts=list(args.prompts),
        max_new_tokens=args.max_new_tokens, text=args.text, ppl_windows=args.ppl_windows, seq_len=args.seq_len,
        bos=args.bos, speed=speed, serve=serve,
        tolerances=Tolerances(ppl_rel=args.ppl_tolerance, ppl_rel_lowp=args.ppl_tolerance_lowp,
                              greedy_lowp_min_prefix=args.greedy_min_prefix),
        venvs=parse_pairs(args.venv, "--venv"), timeouts=parse_pairs(args.engine_timeout, "--engine-timeout",
                                                                     kind=float),
        timeout=args.timeout, min_speedup=parse_pairs(args.min_speedup, "--min-speedup", kind=float),
    )


def run(args: argparse.Namespace) -> int:
    from owl_plugin.validation.report import MARKDOWN_NAME
    from owl_plugin.validation.suite import validate

    suite = validate(options_from_args(args))
    for engine in suite.engines:
        passed = sum(c.passed for c in engine.checks)
        print(f"{engine.engine:<13} {engine.status:<8} {passed}/{len(engine.checks)} checks  {engine.seconds:.0f} s")
    for speedup in suite.speedups:
        print(f"  {speedup.engine} {speedup.variant} {speedup.metric}: {speedup.speedup:.3f}x "
              f"({speedup.low:.3f}-{speedup.high:.3f})")
    for line in suite.failures:
        print(f"FAIL {line.splitlines()[0][:400]}")
    print(f"{'PASSED' if suite.passed else 'FAILED'}; report: {Path(args.report) / MARKDOWN_NAME}")
    return 0 if suite.passed else 1
