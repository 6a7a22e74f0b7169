r"""Quality benchmark: uniform vs OWL vs AlphaPruning vs DLP vs ATP vs tuned allocation for Wanda and SparseGPT.

Prunes the default model (SmolLM2-135M) through llmcompressor recipes at each sparsity,
evaluates WikiText-2 validation perplexity (first 40 windows of 512 tokens) and prints a
markdown table with the ratio to uniform of the same pruner and sparsity, wall time of the
pruning and the peak memory (RSS) of the process that pruned. Calibration comes from the
second half of the same WikiText-2 file and evaluation from the first half, so they never
overlap (or --dataset); ``--eval-windows 270`` evaluates the whole first half (~7 min per row).

    python examples/benchmark_quality.py                       # 50/60/70%, every allocation and pruner
    python examples/benchmark_quality.py --sparsities 0.7 --pruners wanda

Each configuration runs in its own process (clean llmcompressor session, honest peak memory),
after one untimed warm-up prune. At 70% a 135M model is chaotic: float rounding alone (the same
sort with Σx² divided by the token count or not, in ``reference_wanda_loop.py``) moved uniform
Wanda's perplexity from 494 to 553. ``--seeds`` repeats every
row on other calibration draws and adds a table of medians, each draw compared with uniform on
the same draw:

    python examples/benchmark_quality.py --sparsities 0.7 --pruners wanda --allocations uniform owl alpha \
        --num-samples 16 --seeds 0 1 2

Draws or allocations run separately (``--json`` each) print as one table, medians included, with
``--merge``; a run given twice, or rows of different ``--num-samples``, are refused:

    python examples/benchmark_quality.py --merge draws01.json draw2.json

``--nm 4:8`` adds N:M rows: uniform 4:8 against OWL's mixed N:M (one N per block, reference
``wanda_owl_structure``; λ from --nm-owl-lambda); their "measured sparsity" is the achieved mean,
which rounding N per block moves off N/M.

    python examples/benchmark_quality.py --sparsities --pruners wanda --nm 4:8   # N:M rows only

``owl-capped`` rows are OWL with its statistics from only the first ``--statistics-samples``
calibration windows (``OWLAllocationModifier.statistics_samples``; the pruner still uses all):

    python examples/benchmark_quality.py --sparsities 0.7 --pruners wanda \
        --allocations uniform owl owl-capped --statistics-samples 16 --seeds 0 1 2

``--atp-beta`` sweeps ATP's common difference β (one ``atp`` row per value, default 0.005 alone, whose
rows stay labelled ``atp``; any other list labels them ``atp β=0.01`` etc. and records ``atp_beta``). A β
steeper than the bounds allow around the target is projected back by the allocator (mean kept); with L
blocks the plain progression fits while β ≤ 2·min(S, 0.99 − S)/(L − 1) (0.034 for 18 blocks at 70%):

    python examples/benchmark_quality.py --sparsities 0.7 --pruners wanda --allocations uniform atp \
        --atp-beta 0.005 0.01 0.015 --num-samples 16

``owl-linear`` rows give every linear its own outlier ratio and sparsity (``granularity: linear``)
instead of one per decoder block as in the paper; the 2λ band and the parameter-weighted mean
stay the same.

The ``tuned`` row first runs ``owl tune default --method all`` on the *calibration* text only
(held-out windows from its tail; the evaluation file is hidden from it via OWL_EVAL_TEXT), then
prunes with the best profile through ``ProfileAllocationModifier``. A second table compares
tuned with the better of the two paper defaults (OWL M=5 λ=0.08, AlphaPruning ε=0.2).
``--tune-refine G`` adds G generations of block-by-block refinement (``owl tune --refine``).

    python examples/benchmark_quality.py --sparsities 0.6 0.7 --pruners wanda \
        --allocations uniform owl alpha dlp atp tuned

``--profiles`` adds one row per saved profile (``owl profile``, ``owl tune``, or an ablation of one written by
``examples/hold_blocks.py``), pruned through ``ProfileAllocationModifier`` and rescaled to each sparsity:

    python examples/benchmark_quality.py --sparsities 0.7 --pruners wanda --allocations uniform owl \
        --profiles owl70_hold2-6.json

The ``owl-tuned`` row is OWL with its two hyperparameters searched instead of the values the OWL
paper uses for LLaMA-7B (M=5, λ=0.08): ``owl tune default --method owl`` on the calibration text (its whole
grid of 28 points with ``--tune-budget 28``) picks (M, λ), and each draw then prunes through the
recipe's own ``OWLAllocationModifier`` with them, which measures the outliers on that draw's windows.

    python examples/benchmark_quality.py --sparsities 0.7 --pruners wanda --allocations uniform owl owl-tuned \
        --tune-budget 28

The CPU's vector kernels are part of the draw: torch picks AVX-512 or AVX2 code for the same
matmuls and sums, whose rounding differs, and at 70% that moves the result (uniform Wanda, 16×512,
draw 0: 479.96 with AVX-512 kernels, 489.98 with AVX2 on the same machine). Every row records the
kernels it ran with (``cpu_kernels``), ``--merge`` refuses a mix, and ``--cpu-kernels avx2`` pins
torch (ATen, MKL and oneDNN) to AVX2 so that AVX-512 machines reproduce rows measured on AVX2 ones.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
    # OWL with its statistics from the first --statistics-samples calibration windows only
    "owl-capped": "OWLAllocationModifier: {{owl_m: 5, owl_lambda: 0.08, statistics_samples: {statistics_samples}}}",
    # OWL with one ratio per linear (its own outlier ratio) instead of one per decoder block
    "owl-linear": "OWLAllocationModifier: {owl_m: 5, owl_lambda: 0.08, granularity: linear}",
    "alpha": "AlphaAllocationModifier: {epsilon: 0.2}",
    "dlp": "DLPAllocationModifier: {dlp_band: 0.08}",
    "atp": "ATPAllocationModifier: {atp_beta: 0.005}",
    "tuned": "ProfileAllocationModifier: {{profile_file: '{profile}'}}",  # filled with `owl tune`'s best profile
    # OWL with the M and λ `owl tune --method owl` picked (read from its profile) instead of M=5, λ=0.08
    "owl-tuned": "OWLAllocationModifier: {{owl_m: {m:g}, owl_lambda: {lam:g}}}",
}
#: the rows whose profile comes from `owl tune`, and the --method each tunes
TUNED = {"tuned": "all", "owl-tuned": "owl"}
#: label prefix of the --profiles rows (a saved profile each, through ProfileAllocationModifier)
SAVED = "profile:"


def saved_profiles(paths: list[str]) -> dict[str, Path]:
    """Row label → profile file for ``--profiles``: ``profile:<file stem>`` (the folder's name for a folder)."""
    rows: dict[str, Path] = {}
    for given in paths:
        path = Path(given)
        path = path / "sparsity_profile.json" if path.is_dir() else path
        if not path.is_file():
            raise SystemExit(f"--profiles {given}: no such profile file (give a sparsity_profile.json or its folder)")
        name = SAVED + (path.parent.name if path.name == "sparsity_profile.json" else path.stem)
        if name in rows:
            raise SystemExit(f"--profiles {given}: another profile already gives the row {name!r}; rename one")
        rows[name] = path.resolve()
    return rows

RUN_ONE = textwrap.dedent(
    """
    import json, resource, sys, time
    import torch
    from owl_plugin.integrations.llmcompressor.prune import prune
    from owl_plugin.evaluation import perplexity
    from owl_plugin.models import load_model
    from owl_plugin.text import load_text, tokenize, window_protocol
    recipe, output, dataset, samples, seq_len, eval_text, eval_windows, eval_seq_len, seed, model_id, bos = \
        sys.argv[1:12]
    start = time.perf_counter()
    result = prune(model_id, recipe, output, dataset=dataset, num_samples=int(samples), seq_len=int(seq_len),
                   seed=int(seed), overwrite=True, bos=bos)
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model, tokenizer = load_model(output)
    ppl = perplexity(model, tokenize(tokenizer, load_text(eval_text)), seq_len=int(eval_seq_len),
                     max_windows=int(eval_windows), progress=False,
                     bos_token_id=window_protocol(tokenizer, bos).bos_token_id)
    print("RESULT " + json.dumps({"ppl": ppl, "seconds": seconds, "peak_mib": peak_mib,
                                  "measured": result.measured_sparsity,
                                  "cpu_kernels": torch.backends.cpu.get_cpu_capability()}))
    """
)

# Environment that pins torch's CPU kernels to one instruction set (ATen's own kernels, MKL's BLAS and oneDNN).
CPU_KERNELS = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}


ATP_DEFAULT_BETA = 0.005  # the β of ALLOCATIONS["atp"]


def atp_allocations(betas: list[float]) -> dict[str, float]:
    """Row name → β for ``--atp-beta``: the default alone keeps the name ``atp``; otherwise ``atp β=0.01``, ..."""
    if list(betas) == [ATP_DEFAULT_BETA]:
        return {"atp": ATP_DEFAULT_BETA}
    return {f"atp β={beta:g}": beta for beta in betas}


def recipe_text(pruner: str, allocation: str, sparsity: float, profile: Path | None = None, *,
                structure: str = "0:0", owl_lambda: float | None = None, statistics_samples: int = 16,
                atp_beta: float | None = None) -> str:
    lines = ["sparsity_stage:", "  sparsity_modifiers:"]
    if atp_beta is not None:  # an --atp-beta row (any β, default included)
        lines.append(f"    ATPAllocationModifier: {{atp_beta: {atp_beta!r}}}")
    elif allocation == "owl" and owl_lambda is not None:  # N:M rows: OWL's wanda_owl_structure spread
        lines.append(f"    OWLAllocationModifier: {{owl_m: 5, owl_lambda: {owl_lambda}}}")
    elif allocation == "tuned" or allocation.startswith(SAVED):
        lines.append("    " + ALLOCATIONS["tuned"].format(profile=profile))
    elif allocation == "owl-tuned":  # the recipe's own OWL modifier, on this draw's calibration windows
        params = json.loads(profile.read_text())["params"]
        lines.append("    " + ALLOCATIONS["owl-tuned"].format(m=params["m"], lam=params["lam"]))
    elif allocation == "owl-capped":
        lines.append("    " + ALLOCATIONS["owl-capped"].format(statistics_samples=statistics_samples))
    elif ALLOCATIONS[allocation]:
        lines.append(f"    {ALLOCATIONS[allocation]}")
    lines.append(
        f'    {PRUNERS[pruner]}: {{sparsity: {sparsity}, mask_structure: "{structure}", '
        'targets: ["re:model\\\\.layers\\\\.\\\\d+$"]}'
    )
    return "\n".join(lines) + "\n"


def split_halves(text: Path, work: Path) -> tuple[str, str]:
    """Write ``text``'s second half (calibration) and first half (evaluation) into ``work``; return
    their paths as (calibration, evaluation). The halves never overlap, however many windows are drawn."""
    full = text.read_text()
    calibration, evaluation = work / "calibration.txt", work / "evaluation.txt"
    calibration.write_text(full[len(full) // 2:])
    evaluation.write_text(full[: len(full) // 2])
    return str(calibration), str(evaluation)


def check_eval_windows(args, what: str = "the evaluation text") -> None:
    """Refuse, before any pruning, more evaluation windows than the evaluation text holds."""
    from transformers import AutoTokenizer

    from owl_plugin.models import resolve_model
    from owl_plugin.text import load_text, tokenize

    if args.eval_windows < 1:
        raise SystemExit(f"--eval-windows {args.eval_windows}: need at least one window")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.model))
    available = tokenize(tokenizer, load_text(args.text)).numel() // args.eval_seq_len
    if args.eval_windows > available:
        raise SystemExit(f"--eval-windows {args.eval_windows}: {what} holds {available} windows of "
                         f"{args.eval_seq_len} tokens")


def tune(sparsity: float, args, work: Path, method: str = "all", refine: int = 0) -> tuple[Path, float]:
    """``owl tune --method method --refine refine`` on the calibration text only; returns (best profile, seconds)."""
    import time

    output = work / f"tuned-{method}-{sparsity}"
    env = dict(os.environ, OWL_EVAL_TEXT=str(work / "evaluation-text-is-not-for-tuning.txt"))
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "owl_plugin", "tune", args.model, "--method", method, "--sparsity", str(sparsity),
         "--bos", args.bos,
         "--budget", str(args.tune_budget), "--calibration", args.dataset, "--num-samples", str(args.tune_samples),
         "--seq-len", str(args.tune_seq_len), "--heldout-windows", str(args.tune_heldout_windows),
         "--heldout-seq-len", str(args.tune_heldout_seq_len), "--refine", str(refine), "--output", str(output)],
        capture_output=True, text=True, env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"owl tune at {sparsity} failed:\n{proc.stderr[-3000:]}")
    print(proc.stdout, file=sys.stderr)
    return output / "sparsity_profile.json", time.perf_counter() - start


def run(pruner: str, allocation: str, sparsity: float, args, work: Path, profile: Path | None = None, *,
        structure: str = "0:0", seed: int = 0, num_samples: int | None = None, prelude: str = "",
        atp_beta: float | None = None) -> dict:
    """Prune and evaluate one row in a fresh process; ``prelude`` is Python run before ``RUN_ONE``
    (``propagation_check.py`` uses it to change an llmcompressor argument)."""
    nm = structure != "0:0"
    name = allocation if atp_beta is None else f"atp-beta{atp_beta!r}"
    recipe = work / (f"{pruner}-{name}-{sparsity}" + (f"-{structure.replace(':', 'of')}" if nm else "")
                     + f"-seed{seed}.yaml")
    recipe.write_text(recipe_text(pruner, allocation, sparsity, profile, structure=structure,
                                  owl_lambda=args.nm_owl_lambda if nm else None,
                                  statistics_samples=args.statistics_samples, atp_beta=atp_beta))
    output = work / recipe.stem
    proc = subprocess.run(
        [sys.executable, "-c", prelude + RUN_ONE, str(recipe), str(output), args.dataset,
         str(num_samples or args.num_samples), str(args.seq_len), args.text, str(args.eval_windows),
         str(args.eval_seq_len), str(seed), args.model, args.bos],
        capture_output=True, text=True,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{recipe.stem} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    from owl_plugin.paths import default_eval_text

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsities", type=float, nargs="*", default=[0.5, 0.6, 0.7],
                        help="unstructured targets (give none with --nm for N:M rows only)")
    parser.add_argument("--pruners", nargs="+", choices=tuple(PRUNERS), default=list(PRUNERS))
    parser.add_argument("--allocations", nargs="*", choices=tuple(ALLOCATIONS), default=list(ALLOCATIONS),
                        help="rows to run (default: all; give none with --profiles for those rows only)")
    parser.add_argument("--atp-beta", type=float, nargs="+", default=[ATP_DEFAULT_BETA], metavar="BETA",
                        help="ATP's β per decoder block; several values give one atp row each, labelled "
                             "'atp β=...' (default: 0.005 alone, labelled 'atp')")
    parser.add_argument("--profiles", nargs="+", default=[], metavar="JSON",
                        help="also prune with each saved sparsity profile (from `owl profile`, `owl tune` or "
                             "examples/hold_blocks.py; rescaled to each sparsity), one row each, labelled "
                             "'profile:<file name>'")
    parser.add_argument("--text", default=None, help="evaluation text (default: WikiText-2 validation)")
    parser.add_argument("--dataset", default=None, help="calibration text (default: second half of --text)")
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--model", default="default",
                        help="model to prune: default (SmolLM2-135M), gemma3-270m, a folder or a hub id")
    parser.add_argument("--bos", choices=("auto", "on", "off"), default="auto",
                        help="windows of calibration, tuning and evaluation start with BOS (auto: if the "
                             "tokenizer adds one; SmolLM2's adds none, Gemma's does)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="calibration draws (window sampling seeds); with several, a median summary follows. "
                             "At 70%% a 135M model's perplexity swings by 10-20%% between draws, so compare medians")
    parser.add_argument("--no-warmup", action="store_true",
                        help="skip the untimed warm-up prune (the first process on a machine pays one-off costs: "
                             "measured 194 s for a uniform prune that took ~50 s once warm)")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--statistics-samples", type=int, default=16,
                        help="calibration windows for OWL's statistics in the owl-capped rows (default 16)")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="prune nothing: print the tables of rows saved by earlier runs with --json (draws or "
                             "allocations run separately), medians included")
    parser.add_argument("--plot", default=None, help="also draw perplexity vs sparsity to this PNG")
    parser.add_argument("--nm", default=None, metavar="N:M",
                        help="also run N:M rows (e.g. 4:8): uniform N:M vs mixed N:M from --nm-allocations")
    parser.add_argument("--nm-allocations", nargs="+", choices=("owl", "alpha"), default=["owl"])
    parser.add_argument("--nm-owl-lambda", type=float, default=0.125,
                        help="OWL λ for N:M rows (reference wanda_owl_structure Lamda = 2λM; 0.125 at M=8 is Lamda 2)")
    parser.add_argument("--eval-windows", type=int, default=40,
                        help="evaluation windows from the start of the evaluation text (default 40)")
    parser.add_argument("--eval-seq-len", type=int, default=512, help="evaluation window length (default 512)")
    parser.add_argument("--tune-budget", type=int, default=6, help="owl tune candidates per method (default 6)")
    parser.add_argument("--tune-refine", type=int, default=0, metavar="G",
                        help="owl tune --refine generations after its grid (default 0: off)")
    parser.add_argument("--tune-samples", type=int, default=32, help="owl tune statistics windows (default 32)")
    parser.add_argument("--tune-seq-len", type=int, default=512, help="owl tune statistics window length (default 512)")
    parser.add_argument("--tune-heldout-windows", type=int, default=8, help="owl tune held-out windows (default 8)")
    parser.add_argument("--tune-heldout-seq-len", type=int, default=512,
                        help="owl tune held-out window length (default 512)")
    parser.add_argument("--cpu-kernels", choices=tuple(CPU_KERNELS), default="native",
                        help="native: whatever torch picks for this CPU (default); avx2: pin every prune and "
                             "evaluation to AVX2 kernels, which reproduces rows measured on AVX2 machines exactly")
    args = parser.parse_args()
    os.environ.update(CPU_KERNELS[args.cpu_kernels])  # inherited by every prune, evaluation and tune below
    atp_rows = atp_allocations(args.atp_beta)
    if atp_rows != {"atp": ATP_DEFAULT_BETA} and "atp" not in args.allocations:
        parser.error("--atp-beta needs 'atp' among --allocations")
    if len(set(args.atp_beta)) != len(args.atp_beta):
        parser.error(f"--atp-beta {' '.join(map(str, args.atp_beta))}: a value is given twice")
    from owl_plugin.config import ATPConfig

    for beta in args.atp_beta:
        try:
            ATPConfig(beta=beta)
        except ValueError as error:
            parser.error(f"--atp-beta {beta}: {error}")
    if args.statistics_samples < 1:
        parser.error(f"--statistics-samples {args.statistics_samples}: need at least one calibration window")
    if args.merge:
        rows = merge(args.merge)
        print(f"\nRows merged from {', '.join(args.merge)}; CPU kernels {kernels_label(rows)}\n")
        print_tables(rows)
        if args.plot:
            plot_rows(rows, Path(args.plot))
        return
    args.text = str(args.text or default_eval_text())
    profiles = saved_profiles(args.profiles)

    with tempfile.TemporaryDirectory(prefix="owl-bench-") as tmp:
        work = Path(tmp)
        calibration = args.dataset  # recorded in the rows when it is not the default
        if args.dataset is None:  # halves of one file: calibration never overlaps evaluation, however many windows
            args.dataset, args.text = split_halves(Path(args.text), work)
            check_eval_windows(args, "the evaluation text (the first half of the file; the second half is the "
                                     "calibration text)")
        else:
            check_eval_windows(args)
        allocations = [name for a in args.allocations for name in (atp_rows if a == "atp" else [a])]
        allocations += list(profiles)
        jobs = [(seed, p, a, s) for seed in args.seeds for s in args.sparsities for p in args.pruners
                for a in allocations]
        if args.nm:  # N:M rows come last: (seed, pruner, allocation, N/M, structure)
            from owl_plugin.allocators.mixed_nm import parse_mask_structure

            ratio = parse_mask_structure(args.nm).ratio
            jobs += [(seed, p, a, ratio, args.nm) for seed in args.seeds for p in args.pruners
                     for a in ("uniform", *args.nm_allocations)]
        if not args.no_warmup and jobs:  # untimed: pays the first process's one-off costs before any timed row
            run(jobs[0][1], "uniform", 0.5, args, work, num_samples=2)
        rows, tuned = [], {}
        for seed, pruner, allocation, sparsity, *nm in tqdm(jobs, desc="prune + evaluate", unit="run"):
            row = {"seed": seed, "pruner": pruner, "allocation": allocation, "sparsity": sparsity,
                   **({"model": args.model} if args.model != "default" else {}),
                   **({"bos": args.bos} if args.bos != "auto" else {}),
                   "num_samples": args.num_samples, "eval_windows": args.eval_windows,
                   **({"calibration": calibration} if calibration else {})}
            if allocation == "owl-capped":
                row["statistics_samples"] = args.statistics_samples
            if allocation in atp_rows and allocation != "atp":
                row["atp_beta"] = atp_rows[allocation]
            if nm:
                rows.append({**row, "structure": nm[0], **run(pruner, allocation, sparsity, args, work,
                                                             structure=nm[0], seed=seed)})
                tqdm.write("ROW " + json.dumps(rows[-1]), file=sys.stderr)
                continue
            # refinement moves blocks off a method's own formula, so only the `tuned` row (all methods) refines
            refine = args.tune_refine if allocation == "tuned" else 0
            if allocation in TUNED and (allocation, sparsity) not in tuned:  # once per sparsity, for every draw
                tuned[allocation, sparsity] = tune(sparsity, args, work, TUNED[allocation], refine)
            profile = tuned[allocation, sparsity][0] if allocation in TUNED else profiles.get(allocation)
            if allocation in profiles:
                row["profile"] = str(profiles[allocation])
            rows.append({**row, **run(pruner, allocation, sparsity, args, work, profile, seed=seed,
                                      atp_beta=atp_rows.get(allocation) if allocation != "atp" else None)})
            if allocation in TUNED:
                rows[-1]["tune_seconds"] = tuned[allocation, sparsity][1]
                rows[-1]["tuned_as"] = tuned_as(json.loads(profile.read_text()))
                rows[-1]["tune_budget"] = args.tune_budget
                rows[-1]["tune_refine"] = refine
            tqdm.write("ROW " + json.dumps(rows[-1]), file=sys.stderr)  # partial results survive an interrupted run

    name = "SmolLM2-135M" if args.model == "default" else args.model
    print(f"\n{name} (windows: --bos {args.bos}), WikiText-2 validation perplexity "
          f"({args.eval_windows}×{args.eval_seq_len} tokens); "
          f"calibration {args.num_samples}×{args.seq_len}"
          f" tokens from {calibration or 'the second half of the file'},"
          f" window seeds {' '.join(map(str, args.seeds))};"
          f" CPU kernels {kernels_label(rows)}\n")
    print_tables(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if args.plot:
        plot_rows(rows, Path(args.plot))


def tuned_as(saved: dict) -> str:
    """What ``owl tune`` picked, from its saved profile: ``atp``, ``refined from dlp``, ``owl M=3 λ=0.2``."""
    if saved["method"] == "refined":
        return f"refined from {saved['params']['from']['method']}"
    if saved["method"] == "owl":
        return f"owl M={saved['params']['m']:g} λ={saved['params']['lam']:g}"
    return saved["method"]


def print_tables(rows: list[dict]) -> None:
    """The per-run table, the median summary when there are several draws, and the tuned-vs-default table."""
    print_rows(rows)
    if len({r["seed"] for r in rows}) > 1:
        print_seed_summary(rows)
    defaults = [r for r in rows if r["allocation"] in ("owl", "alpha") and not r.get("structure")]
    if any(r["allocation"] == "tuned" for r in rows) and defaults:
        print("\nTuned (owl tune on held-out calibration windows, best of all methods) vs the better paper default\n")
        print("| sparsity | pruner | seed | tuned as | tuned ppl | better default | its ppl | tuned vs it "
              "| tune time (s) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in (r for r in rows if r["allocation"] == "tuned"):
            same = [d for d in defaults if key(d) == key(r)]
            if same:
                ref = min(same, key=lambda d: d["ppl"])
                print(f"| {r['sparsity']:.0%} | {r['pruner']} | {r['seed']} | {r['tuned_as']} | {r['ppl']:.2f} "
                      f"| {ref['allocation']} | {ref['ppl']:.2f} | {r['ppl'] / ref['ppl'] - 1:+.1%} "
                      f"| {r['tune_seconds']:.0f} |")


def merge(paths: list[str]) -> list[dict]:
    """Rows from earlier ``--json`` outputs (e.g. draws or allocations run separately), in file order.

    A (pruner, sparsity, structure, seed, allocation) run given twice, or rows of different
    calibration sizes, texts, evaluation windows, owl-capped caps or CPU kernels, are errors: which
    ones to compare would be a choice, and the tables must not make it silently. Rows written before
    ``cpu_kernels`` was recorded carry none and are not checked.
    """
    rows, seen = [], {}
    for path in paths:
        for row in json.loads(Path(path).read_text()):
            ident = (*key(row), row["allocation"])
            if ident in seen:
                raise SystemExit(f"--merge: {path} repeats the run {ident} already read from {seen[ident]}")
            seen[ident] = path
            rows.append(row)
    models = {(row.get("model", "default"), row.get("bos", "auto")) for row in rows}
    if len(models) > 1:
        raise SystemExit(f"--merge: the rows come from different models or --bos {sorted(models)}; "
                         "merge one model and window protocol at a time")
    sizes = {row.get("num_samples") for row in rows}
    if len(sizes) > 1:
        raise SystemExit(f"--merge: the rows come from different calibration sizes {sorted(map(str, sizes))}; "
                         "merge one size at a time")
    texts = {row.get("calibration") or "second half of the evaluation file" for row in rows}
    if len(texts) > 1:
        raise SystemExit(f"--merge: the rows come from different calibration texts {sorted(texts)}; "
                         "merge one text at a time")
    caps = {row["statistics_samples"] for row in rows if row["allocation"] == "owl-capped"}
    if len(caps) > 1:
        raise SystemExit(f"--merge: the owl-capped rows use different --statistics-samples {sorted(caps)}; "
                         "merge one at a time")
    windows = {row.get("eval_windows", 40) for row in rows}  # rows written before the field existed used 40
    if len(windows) > 1:
        raise SystemExit(f"--merge: the rows were evaluated on different numbers of windows {sorted(windows)}; "
                         "merge one evaluation at a time")
    kernels = recorded_kernels(rows)
    if len(kernels) > 1:
        raise SystemExit(f"--merge: the rows ran on different CPU kernels {kernels}, whose rounding moves "
                         "the results; rerun one set with --cpu-kernels, or merge one set at a time")
    return rows


def recorded_kernels(rows: list[dict]) -> list[str]:
    """The CPU kernels the rows ran on, sorted (rows written before ``cpu_kernels`` existed add none)."""
    return sorted({row["cpu_kernels"] for row in rows if "cpu_kernels" in row})


def kernels_label(rows: list[dict]) -> str:
    return ", ".join(recorded_kernels(rows)) or "not recorded"


def key(row: dict) -> tuple:
    """What a row is compared within: same pruner, sparsity, structure and calibration draw (text, seed, size)."""
    return (row["pruner"], row["sparsity"], row.get("structure"), row["seed"], row.get("num_samples"),
            row.get("calibration"))


def label(row: dict) -> str:
    return f"{row['structure']} ({row['sparsity']:.0%})" if row.get("structure") else f"{row['sparsity']:.0%}"


def print_rows(rows: list[dict]) -> None:
    """One line per run; "vs uniform" against the uniform run with the same pruner, sparsity and seed."""
    print("| sparsity | pruner | allocation | seed | perplexity | vs uniform | measured sparsity | prune time (s) "
          "| time vs uniform | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    base = {key(r): r for r in rows if r["allocation"] == "uniform"}
    for r in rows:
        ref = base.get(key(r))
        vs = f"{r['ppl'] / ref['ppl'] - 1:+.1%}" if ref else "–"
        tv = f"{r['seconds'] / ref['seconds']:.2f}×" if ref else "–"
        print(f"| {label(r)} | {r['pruner']} | {r['allocation']} | {r['seed']} | {r['ppl']:.2f} | {vs} | "
              f"{r['measured']:.4f} | {r['seconds']:.0f} | {tv} | {r['peak_mib']:.0f} |")


def print_seed_summary(rows: list[dict]) -> None:
    """Medians over calibration draws: perplexity, per-draw ratio to uniform (and its range), time ratio."""
    base = {key(r): r for r in rows if r["allocation"] == "uniform"}
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["sparsity"], r.get("structure"), r["pruner"], r["allocation"]), []).append(r)
    print("\nMedian over calibration draws (each draw compared with uniform on the same draw)\n")
    print("| sparsity | pruner | allocation | draws | median perplexity | median vs uniform | range vs uniform "
          "| median time vs uniform |")
    print("|---|---|---|---|---|---|---|---|")
    for (_, _, pruner, allocation), group in groups.items():
        pairs = [(r, base[key(r)]) for r in group if key(r) in base]
        ratios = [r["ppl"] / u["ppl"] - 1 for r, u in pairs]
        times = [r["seconds"] / u["seconds"] for r, u in pairs]
        vs = f"{statistics.median(ratios):+.1%}" if ratios else "–"
        spread = f"{min(ratios):+.1%} … {max(ratios):+.1%}" if ratios else "–"
        tv = f"{statistics.median(times):.2f}×" if times else "–"
        print(f"| {label(group[0])} | {pruner} | {allocation} | {len(group)} | "
              f"{statistics.median(r['ppl'] for r in group):.2f} | {vs} | {spread} | {tv} |")


def plot_rows(rows: list[dict], path: Path) -> None:
    """Perplexity vs sparsity, one line per (pruner, allocation), log scale (unstructured rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    lines: dict[tuple[str, str], dict[float, list[float]]] = {}
    for r in rows:
        if not r.get("structure"):
            lines.setdefault((r["pruner"], r["allocation"]), {}).setdefault(r["sparsity"], []).append(r["ppl"])
    for (pruner, allocation), by_sparsity in sorted(lines.items()):
        xs = sorted(by_sparsity)
        ys = [statistics.median(by_sparsity[x]) for x in xs]  # median over calibration draws
        ax.plot(xs, ys, marker="o", linestyle="-" if pruner == "wanda" else "--", label=f"{pruner} {allocation}")
    ax.set_yscale("log")
    ax.set_xlabel("target sparsity")
    ax.set_ylabel("WikiText-2 perplexity (log)")
    ax.set_title("SmolLM2-135M: layerwise allocation vs uniform")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
