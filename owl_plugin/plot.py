"""Per-layer sparsity plot of one or more profiles (PNG, matplotlib's Agg backend)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from owl_plugin.profile import SparsityProfile


def plot_profiles(
    profiles: SparsityProfile | Sequence[SparsityProfile],
    path: str | os.PathLike,
    *,
    title: str | None = None,
) -> Path:
    """Draw per-block sparsity (lines with markers, one per profile) and the target.

    When a single profile carries per-block scores (outlier ratio or α), they are drawn
    as bars on a second axis, so the reader sees *why* each block got its ratio.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(profiles, SparsityProfile):
        profiles = [profiles]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(10, 4.2), dpi=110)
    for profile in profiles:
        blocks = profile.block_sparsities()
        xs = range(len(blocks))
        label = f"{profile.method} (mean {profile.mean_sparsity():.3f})"
        ax.plot(xs, list(blocks.values()), marker="o", markersize=3.5, label=label, zorder=3)
    targets = sorted({round(p.target, 6) for p in profiles})
    for target in targets:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, zorder=2)
    ax.set_xlabel("decoder block")
    ax.set_ylabel("sparsity")
    ax.grid(alpha=0.3)
    if len(profiles) == 1 and profiles[0].scores:
        profile = profiles[0]
        blocks = list(profile.block_sparsities())
        if all(b in profile.scores for b in blocks):
            twin = ax.twinx()
            twin.bar(range(len(blocks)), [profile.scores[b] for b in blocks], color="tab:orange", alpha=0.25, zorder=1)
            name = {"owl": "outlier ratio (%)", "alpha": "mean α", "dlp": "median Wanda score"}.get(
                profile.method, "score")
            twin.set_ylabel(name, color="tab:orange")
            ax.set_zorder(twin.get_zorder() + 1)
            ax.patch.set_visible(False)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title or ", ".join(f"{p.method} @ {p.target:g}" for p in profiles))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
