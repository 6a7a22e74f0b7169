"""What ``owl tune`` writes: the best profile, the table of candidates, and the score plot.

    <output>/sparsity_profile.json   the best allocation (usable by ProfileAllocationModifier, owl export)
    <output>/sparsity_profile.png    its per-block ratios next to the uniform target
    <output>/candidates.md           markdown table of every candidate, best first
    <output>/candidates.json         the same records as JSON
    <output>/scores.png              score versus hyperparameter, one panel per method

The folder is built beside its destination and published in one rename (``owl_plugin.staging``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from owl_plugin.plot import plot_profiles
from owl_plugin.staging import check_destination, publish, staged_folder
from owl_plugin.tuning.proxy import PROXY_NAME
from owl_plugin.tuning.search import TuneResult, block_spread, ranked, uniform_record
from owl_plugin.tuning.space import PLOT_AXIS

SHOWN_PARAMS = {"owl": ("m", "lam"), "alpha": ("epsilon", "xmin"), "dlp": ("band",), "atp": ("beta",), "uniform": (),
                "refined": ("from", "generations", "step")}


def describe(record: Mapping[str, Any]) -> str:
    """``owl m=5 lam=0.08`` style label of a candidate."""
    shown = SHOWN_PARAMS.get(record["method"], ())
    return " ".join([record["method"], *(f"{k}={record['params'][k]:g}" if isinstance(record["params"][k], float)
                                         else f"{k}={record['params'][k]}" for k in shown)])


def markdown_table(result: TuneResult) -> str:
    """Every candidate, best first, with its KL, held-out perplexity and ratio to uniform."""
    base = uniform_record(result.records)
    lines = [f"Proxy: {result.proxy}", "", f"target sparsity {result.target:g}", "",
             "| rank | candidate | KL | vs uniform | held-out ppl | block spread | projected |",
             "|---|---|---|---|---|---|---|"]
    for rank, r in enumerate(ranked(result.records), 1):
        vs = f"{r['kl'] / base['kl'] - 1:+.1%}" if base and base["kl"] > 0 else "–"
        lines.append(f"| {rank} | {describe(r)} | {r['kl']:.5g} | {vs} | {r['ppl']:.2f} | "
                     f"{block_spread(r):.3f} | {'yes' if r['projected'] else 'no'} |")
    return "\n".join(lines) + "\n"


def plot_scores(records: Sequence[Mapping[str, Any]], path: str | os.PathLike, *, title: str = "") -> Path:
    """Score versus each method's main hyperparameter (other parameters as separate lines), and, after
    a refinement, the best score versus generation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in PLOT_AXIS if any(r["method"] == m for r in records)]
    refined = next((r for r in records if r["method"] == "refined"), None)
    panels = len(methods) + (refined is not None)
    base = uniform_record(records)
    best = min(records, key=lambda r: r["kl"])
    fig, axes = plt.subplots(1, max(panels, 1), figsize=(4.2 * max(panels, 1), 3.6), dpi=110, squeeze=False)
    if refined is not None:
        ax = axes[0][-1]
        ax.plot(range(len(refined["history"])), refined["history"], marker=".",
                label=f"from {refined['params']['from']}")
        if base:
            ax.axhline(base["kl"], color="grey", linestyle="--", linewidth=1, label="uniform")
        ax.set_xlabel("generation")
        ax.set_ylabel("KL(dense ‖ pruned), best so far")
        ax.set_title(f"refined ({refined['accepted']} moves kept)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax, method in zip(axes[0], methods, strict=False):  # a last panel may be the refined one
        axis = PLOT_AXIS[method]
        mine = [r for r in records if r["method"] == method]
        groups: dict[str, list] = {}
        for r in mine:
            other = ", ".join(f"{k}={r['params'][k]}" for k in SHOWN_PARAMS[method] if k != axis)
            groups.setdefault(other, []).append(r)
        for label, rows in groups.items():
            rows = sorted(rows, key=lambda r: r["params"][axis])
            ax.plot([r["params"][axis] for r in rows], [r["kl"] for r in rows], marker="o", label=label or None)
        if base:
            ax.axhline(base["kl"], color="grey", linestyle="--", linewidth=1, label="uniform")
        if best["method"] == method:
            ax.plot([best["params"][axis]], [best["kl"]], marker="*", markersize=14, color="red", label="best")
        ax.set_xlabel({"lam": "λ", "epsilon": "ε", "band": "band", "beta": "β"}[axis])
        ax.set_ylabel("KL(dense ‖ pruned)")
        ax.set_title(method)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_outputs(result: TuneResult, output: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the best profile, its plot, the candidates table (md + JSON) and the score plot, atomically.

    An existing ``output`` is replaced only with ``overwrite`` and only if owl wrote it (``staging.MARKER``)."""
    output = check_destination(output, overwrite=overwrite, flag="overwrite=True (owl tune --overwrite)")
    with staged_folder(output) as staging:
        result.profile.save(staging / "sparsity_profile.json")
        plot_profiles(result.profile, staging / "sparsity_profile.png",
                      title=f"owl tune best: {describe(result.best)} @ {result.target:g}")
        (staging / "candidates.md").write_text(markdown_table(result))
        (staging / "candidates.json").write_text(json.dumps(
            {"proxy": result.proxy, "target": result.target, "best": result.best["id"],
             "candidates": ranked(result.records)}, indent=1))
        plot_scores(result.records, staging / "scores.png",
                    title=f"owl tune @ {result.target:g}: {PROXY_NAME} on held-out calibration windows")
        publish(staging, output, overwrite=overwrite)
    return output
