"""The hyperparameters ``owl tune`` searches, per method, in the order it tries them.

Each axis lists its values coarse to fine; the grid is walked in growing nested sub-grids
(every point whose values all come from the first k of each axis, for k = 1, 2, ...), so a
small budget still spans each axis end to end instead of exhausting one corner. The papers'
defaults come first, so the defaults are always among the candidates; ATP's grid is relative to
the steepest ramp the bounds allow instead (its paper default, β=0.005 at LLaMA's depth, is not a
fraction of it at every depth and target).

    owl:   M ∈ {5, 3, 8, 12}, λ ∈ {0.08, 0.2, 0.04, 0.14, 0.12, 0.25, 0.02}
    alpha: ε ∈ {0.2, 0.6, 0.4, 0.8, 0.3, 0.5, 0.7, 0.1}, xmin ∈ {peak, median}
    dlp:   band ∈ {0.08, 0.2, 0.04, 0.14, 0.12, 0.25, 0.02}
    atp:   β = f · β_max, f ∈ {0.5, 1, 0.25, 0.75, -0.25, 0.125, 0.375, 0.625, 0.875},
           β_max = 2·min(S − lower, upper − S)/(L − 1): the steepest progression that fits the bounds

Band-like values are capped by what the bounds allow (half their width).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from owl_plugin.config import AllocationConfig, make_config

METHODS = ("owl", "alpha", "dlp", "atp")

#: method → axis name → values, coarse to fine (the paper default first where there is one)
AXES: dict[str, dict[str, tuple[Any, ...]]] = {
    "owl": {"lam": (0.08, 0.2, 0.04, 0.14, 0.12, 0.25, 0.02), "m": (5.0, 3.0, 8.0, 12.0)},
    "alpha": {"epsilon": (0.2, 0.6, 0.4, 0.8, 0.3, 0.5, 0.7, 0.1), "xmin": ("peak", "median")},
    "dlp": {"band": (0.08, 0.2, 0.04, 0.14, 0.12, 0.25, 0.02)},
    "atp": {"beta": (0.5, 1.0, 0.25, 0.75, -0.25, 0.125, 0.375, 0.625, 0.875)},  # fractions of beta_max
}

#: the axis a score plot puts on x, per method (the others become separate lines)
PLOT_AXIS = {"owl": "lam", "alpha": "epsilon", "dlp": "band", "atp": "beta"}


def nested_grid(axes: dict[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """All points of the grid, ordered by the coarsest level that contains them (see module docstring).

    Example:
        >>> nested_grid({"a": (1, 2), "b": ("x", "y")})
        [{'a': 1, 'b': 'x'}, {'a': 1, 'b': 'y'}, {'a': 2, 'b': 'x'}, {'a': 2, 'b': 'y'}]
    """
    names = list(axes)
    indices = itertools.product(*(range(len(axes[n])) for n in names))
    ordered = sorted(indices, key=lambda idx: (max(idx), idx))
    return [{n: axes[n][i] for n, i in zip(names, idx, strict=True)} for idx in ordered]


def atp_beta_max(target: float, num_blocks: int, bounds: tuple[float, float]) -> float:
    """The largest |β| whose progression around ``target`` stays inside ``bounds`` (equal blocks)."""
    if num_blocks < 2:
        return 0.0
    lo, hi = bounds
    return 2.0 * min(target - lo, hi - target) / (num_blocks - 1)


def candidates(
    method: str,
    budget: int,
    *,
    target: float,
    num_blocks: int,
    bounds: tuple[float, float] = (0.0, 0.99),
    granularity: str = "block",
) -> list[AllocationConfig]:
    """The first ``budget`` configs of ``method``'s search, valid for ``bounds``.

    Args:
        method: ``owl``, ``alpha``, ``dlp`` or ``atp``.
        budget: how many candidates of this method to try (>= 1).
        target: S, needed to scale ATP's β.
        num_blocks: L, the number of decoder blocks (ATP's β scale).
    """
    if method not in AXES:
        raise ValueError(f"unknown tuning method {method!r}; choose one of {METHODS} or 'all'")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget={budget!r} must be an integer >= 1 (candidates per method)")
    lo, hi = bounds
    half = (hi - lo) / 2
    configs: list[AllocationConfig] = []
    seen: set[tuple] = set()
    for point in nested_grid(AXES[method]):
        params = dict(point)
        if method == "atp":
            params["beta"] = round(point["beta"] * atp_beta_max(target, num_blocks, bounds), 6)
        if method in ("owl", "dlp"):
            key = "lam" if method == "owl" else "band"
            params[key] = min(params[key], half)
        params["granularity"] = granularity
        key = tuple(sorted(params.items()))
        if key in seen:
            continue
        seen.add(key)
        configs.append(make_config(method, bounds=bounds, **params))
        if len(configs) == budget:
            break
    return configs
