"""Per-expert sparsity of an MoE profile: a heat map, decoder blocks × experts (PNG, matplotlib's Agg backend).

Each cell is the expert's ratio, the parameter-weighted mean over its matrices
(gate/up/down, or Mixtral's w1/w3/w2); experts named in ``params["unrouted_experts"]`` (no
calibration token reached them, ``owl_plugin.experts.UNROUTED_RULE``) are marked with ×.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from owl_plugin.experts import EXPERT_LINEAR
from owl_plugin.profile import SparsityProfile

_INDEX = re.compile(r"\.experts\.(\d+)$")


def expert_ratios(profile: SparsityProfile) -> dict[str, dict[int, float]]:
    """Block → {expert index → parameter-weighted mean ratio of its matrices}; empty for a dense model's profile."""
    sums: dict[str, dict[int, list[float]]] = {}
    for name, entry in profile.modules.items():
        match = EXPERT_LINEAR.match(name)
        if not match:
            continue
        index = int(_INDEX.search(match["expert"]).group(1))
        cell = sums.setdefault(entry.block, {}).setdefault(index, [0.0, 0.0])
        cell[0] += entry.sparsity * entry.num_params
        cell[1] += entry.num_params
    return {block: {e: s / n for e, (s, n) in sorted(cells.items())} for block, cells in sums.items()}


def plot_expert_ratios(profile: SparsityProfile, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Draw the blocks × experts heat map of ``profile``'s per-expert ratios to ``path``.

    Raises:
        ValueError: the profile holds no expert matrices (not an MoE model).
    """
    ratios = expert_ratios(profile)
    if not ratios:
        raise ValueError(f"profile ({profile.method} @ {profile.target:g}) holds no MoE expert matrices to plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = list(ratios)
    experts = max(max(cells) for cells in ratios.values()) + 1
    grid = np.full((len(blocks), experts), np.nan)
    for row, block in enumerate(blocks):
        for e, ratio in ratios[block].items():
            grid[row, e] = ratio
    unrouted = {EXPERT_LINEAR.match(n)["expert"] for n in profile.params.get("unrouted_experts", {}).get("modules", [])}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(min(4 + 0.35 * experts, 16), min(2 + 0.3 * len(blocks), 12)), dpi=110)
    image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="sparsity")
    for row, block in enumerate(blocks):
        for e in range(experts):
            if any(u.startswith(block + ".") and u.endswith(f".experts.{e}") for u in unrouted):
                ax.text(e, row, "×", ha="center", va="center", color="white", fontsize=9)
    ax.set_xlabel("expert" + (" (× = no calibration token routed)" if unrouted else ""))
    ax.set_ylabel("decoder block")
    ax.set_yticks(range(len(blocks)), [b.rsplit(".", 1)[-1] for b in blocks])
    ax.set_title(title or f"{profile.method} @ {profile.target:g}: per-expert sparsity")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
