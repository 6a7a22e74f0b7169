"""The report of ``owl validate``: ``report.json`` (everything), ``report.md`` (tables) and ``report.png``.

The plot has two panels: the speed-up of the pruned model over the dense baseline per engine,
variant and metric (bars at the median, whiskers from the extremes), and the per-layer sparsity of
``sparsity_profile.json`` with the sparsity each engine read back from its loaded weights.
Files are written to a temporary name and renamed, so a reader never sees half a report.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from owl_plugin.validation.protocol import METRIC_UNITS

if TYPE_CHECKING:
    from owl_plugin.validation.suite import SuiteReport

JSON_NAME, MARKDOWN_NAME, PLOT_NAME = "report.json", "report.md", "report.png"
_METRIC_TITLES = {"prefill_ms": "prefill (ms)", "decode_tok_s": "decode tok/s (batch 1)",
                  "throughput_tok_s": "throughput tok/s"}


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _short(text: str, limit: int = 220) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def markdown(suite: SuiteReport, *, plot: str | None = PLOT_NAME) -> str:
    """The Markdown report: verdict, per-engine table, speed table, failures, serve latencies."""
    verdict = "PASSED" if suite.passed else "FAILED"
    lines = [f"# owl validate: {verdict}", "",
             f"- pruned: `{suite.pruned}`", f"- compact (made by the suite): `{suite.compact}`",
             f"- baseline: `{suite.baseline}`", f"- text: `{suite.settings.get('text')}`, "
             f"{suite.settings.get('ppl_windows')} windows of {suite.settings.get('seq_len')} tokens; "
             f"{len(suite.settings.get('prompts', []))} prompts × {suite.settings.get('max_new_tokens')} greedy tokens",
             f"- tolerances: {suite.settings.get('tolerances')}", f"- wall time: {suite.seconds:.0f} s", ""]
    lines += ["| engine | status | checks passed | decode speed-up | prefill speed-up | throughput speed-up | "
              "ppl pruned | time |", "|---|---|---|---|---|---|---|---|"]
    for engine in suite.engines:
        rows = {(s.variant, s.metric): s for s in suite.speedups if s.engine == engine.engine}
        variants = sorted({v for v, _ in rows}) or ["—"]
        for variant in variants:
            cells = []
            for metric in ("decode_tok_s", "prefill_ms", "throughput_tok_s"):
                s = rows.get((variant, metric))
                cells.append(f"{s.speedup:.2f}× ({s.low:.2f}–{s.high:.2f})" if s else "—")
            label = engine.engine if variant == "—" else f"{engine.engine} ({variant})"
            ppl = engine.ppl.get("pruned")
            lines.append(f"| {label} | {engine.status} | {sum(c.passed for c in engine.checks)}/{len(engine.checks)} "
                         f"| {' | '.join(cells)} | {f'{ppl:.3f}' if ppl else '—'} | {engine.seconds:.0f} s |")
    lines.append("")
    if suite.thresholds:
        lines += ["## Speed-up thresholds", ""] + [f"- {'✅' if t.passed else '❌'} {t.detail}"
                                                  for t in suite.thresholds] + [""]
    failures = suite.failures
    if failures:
        lines += ["## Failures", ""] + [f"- {_short(f, 600)}" for f in failures] + [""]
    lines += ["## Checks", "", "| engine | check | result | detail |", "|---|---|---|---|"]
    for check in suite.suite_checks:
        lines.append(f"| suite | {check.name} | {'pass' if check.passed else 'FAIL'} | {_cell(_short(check.detail))} |")
    for engine in suite.engines:
        if engine.error:
            lines.append(f"| {engine.engine} | (runner) | {engine.status.upper()} | {_cell(_short(engine.error))} |")
        for check in engine.checks:
            lines.append(f"| {engine.engine} | {check.name} | {'pass' if check.passed else 'FAIL'} | "
                         f"{_cell(_short(check.detail))} |")
    lines.append("")
    speed_rows = [(e.engine, r) for e in suite.engines for r in e.speed]
    if speed_rows:
        reps = (suite.settings.get("speed") or {}).get("repetitions")
        lines += ["## Speed (interleaved dense baseline / pruned, median and min–max over "
                  f"{reps} repetitions)", "", "| engine | variant | model | metric | median | min–max |",
                  "|---|---|---|---|---|---|"]
        for engine, row in sorted(speed_rows, key=lambda x: (x[0], x[1].variant, x[1].metric, x[1].model)):
            lines.append(f"| {engine} | {row.variant} | {row.model} | {row.metric} | {row.median:.2f} "
                         f"{METRIC_UNITS.get(row.metric, row.unit)} | {row.min:.2f}–{row.max:.2f} |")
        lines.append("")
    for engine in suite.engines:
        serve = engine.notes.get("serve")
        if serve:
            lines += [f"## Serving under load ({engine.engine})", "",
                      "| server | requests | concurrency | errors | p50 ms | p90 ms | p99 ms | max ms | wall s |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for name, stats in serve.items():
                if not isinstance(stats, dict) or "latency_ms" not in stats:
                    continue
                lat = stats["latency_ms"]
                lines.append(f"| {name} | {stats.get('requests')} | {stats.get('concurrency')} | "
                             f"{stats.get('errors')} | {lat.get('p50', 0):.0f} | {lat.get('p90', 0):.0f} | "
                             f"{lat.get('p99', 0):.0f} | {lat.get('max', 0):.0f} | "
                             f"{stats.get('wall_seconds', 0):.1f} |")
            lines.append("")
    if plot:
        lines += [f"![speed-up per engine and per-layer sparsity]({plot})", ""]
    lines += [f"Details: `{JSON_NAME}`; runner logs: " + ", ".join(f"`{e.log}`" for e in suite.engines if e.log), ""]
    return "\n".join(lines)


def plot(suite: SuiteReport, path: Path) -> Path | None:
    """Speed-up per engine (left) and per-layer sparsity, profile vs read back (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from owl_plugin.profile import SparsityProfile

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.4), dpi=110, gridspec_kw={"width_ratios": [1, 1.4]})
    if suite.speedups:
        metrics = [m for m in _METRIC_TITLES if any(s.metric == m for s in suite.speedups)]
        groups = sorted({(s.engine, s.variant) for s in suite.speedups})
        width = 0.8 / max(1, len(metrics))
        for i, metric in enumerate(metrics):
            xs, ys, errs = [], [], [[], []]
            for g, (engine, variant) in enumerate(groups):
                s = next((s for s in suite.speedups if (s.engine, s.variant, s.metric) == (engine, variant, metric)),
                         None)
                if s is None:
                    continue
                xs.append(g + (i - (len(metrics) - 1) / 2) * width)
                ys.append(s.speedup)
                errs[0].append(max(0.0, s.speedup - s.low))
                errs[1].append(max(0.0, s.high - s.speedup))
            left.bar(xs, ys, width=width, yerr=errs, capsize=3, label=_METRIC_TITLES[metric])
        left.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        left.set_xticks(range(len(groups)))
        left.set_xticklabels([f"{e}\n{v}" for e, v in groups], fontsize=8)
        left.set_ylabel("speed-up pruned / dense (×)")
        left.legend(fontsize=7)
    else:
        left.text(0.5, 0.5, "no speed measured", ha="center", va="center", transform=left.transAxes)
    left.set_title("speed-up per engine (median, min–max)")
    try:
        profile = SparsityProfile.load(Path(suite.pruned))
    except (OSError, ValueError):
        profile = None
    if profile is not None:
        blocks = profile.block_sparsities()
        right.plot(range(len(blocks)), list(blocks.values()), marker="o", markersize=4, linewidth=2,
                   label=f"sparsity_profile.json ({profile.method}, mean {profile.mean_sparsity():.3f})", zorder=3)
        for engine in suite.engines:
            for check in engine.checks:
                measured = check.values.get("block_sparsity")
                if check.name.startswith("sparsity/") and isinstance(measured, dict):
                    right.plot(range(len(blocks)), [measured.get(b, float("nan")) for b in blocks], marker="x",
                               markersize=3, linewidth=0.8, linestyle=":",
                               label=f"{engine.engine} {check.name.removeprefix('sparsity/')} (read back)")
        right.set_xlabel("decoder block")
        right.set_ylabel("sparsity")
        right.legend(fontsize=7, loc="best")
        right.grid(alpha=0.3)
    right.set_title("per-layer sparsity: profile vs engines' loaded weights")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_report(suite: SuiteReport, folder: str | os.PathLike) -> dict[str, Path]:
    """Write ``report.json``, ``report.png`` and ``report.md`` into ``folder``; return their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / JSON_NAME, "markdown": folder / MARKDOWN_NAME, "plot": folder / PLOT_NAME}
    plot(suite, paths["plot"])
    _atomic_write(paths["json"], json.dumps(suite.to_dict(), indent=2, default=str) + "\n")
    _atomic_write(paths["markdown"], markdown(suite))
    return paths
