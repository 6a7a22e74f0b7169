"""Free-form per-block refinement of an allocation by evolutionary search (after EvoPress).

Sieberling et al., "EvoPress: Towards Optimal Dynamic Model Compression via Evolutionary
Search" (arXiv 2410.14649, Alg. 1): keep one parent allocation; every generation makes λ
offspring by *level switches* that move sparsity between units without changing the total,
picks the most promising offspring on a few tokens (cheap selection), scores that one on all
held-out tokens, and keeps it when it beats the parent. The grid search of ``owl tune``
only moves along a method's one or two hyperparameters; this step lets every block move.

A unit is a decoder block b with n_b prunable weights and ratio s_b. One move picks two
blocks i ≠ j and shifts

    s_j ← s_j + δ,    s_i ← s_i − δ · n_j / n_i

so Σ_b n_b · s_b, and with it the parameter-weighted mean S, is unchanged. A move that would
leave a block's bounds is skipped. An offspring makes 1 … ``max_moves`` moves. Within a block
every module moves by the same amount, so a linear-granularity profile keeps its inner shape.

The search is deterministic for a seed, and it sees candidates only through two score
callables, so a caller can serve repeated candidates from a log (``owl tune`` resumes that way).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from owl_plugin.profile import ModuleSparsity, SparsityProfile


@dataclass(frozen=True, kw_only=True)
class RefineSettings:
    """How long and how boldly to search.

    Attributes:
        generations: full-score evaluations after the start (0 turns refinement off).
        offspring: λ, offspring per generation, ranked on the screening windows.
        step: δ, the sparsity one move adds to a block.
        max_moves: most moves per offspring (each draws 1 … max_moves).
        screen_windows: held-out windows the offspring are ranked on (the first ones).
        seed: random seed of the moves.
    """

    generations: int = 0
    offspring: int = 4
    step: float = 0.02
    max_moves: int = 3
    screen_windows: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        for name, least in (("generations", 0), ("offspring", 1), ("max_moves", 1), ("screen_windows", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"refine {name}={value!r} must be an integer >= {least}")
        if not (0.0 < self.step < 0.5):
            raise ValueError(f"refine step={self.step!r} must be in (0, 0.5), e.g. 0.02")


@dataclass
class RefineResult:
    """The best ratios found, their score, and the parent's score after every generation."""

    ratios: np.ndarray
    score: float
    start_score: float
    history: list[float] = field(default_factory=list)
    accepted: int = 0


def mutate(ratios: np.ndarray, sizes: np.ndarray, lower: np.ndarray, upper: np.ndarray,
           rng: np.random.Generator, *, step: float, max_moves: int) -> np.ndarray:
    """One offspring: 1 … ``max_moves`` level switches that keep Σ n_b · s_b (module docstring)."""
    child = ratios.copy()
    for _ in range(int(rng.integers(1, max_moves + 1))):
        i, j = rng.choice(len(child), size=2, replace=False)
        lowered, raised = child[i] - step * sizes[j] / sizes[i], child[j] + step
        if lowered >= lower[i] and raised <= upper[j]:
            child[i], child[j] = lowered, raised
    return child


def evolve(start: np.ndarray, sizes: np.ndarray, lower: np.ndarray, upper: np.ndarray, *,
           score: Callable[[np.ndarray], float], screen: Callable[[np.ndarray], float],
           settings: RefineSettings, start_score: float | None = None, progress: bool = True) -> RefineResult:
    """(1 + λ) search from ``start``: the core loop, on plain arrays (lower score is better).

    Args:
        start: s_b per block, inside [lower, upper].
        sizes: n_b, prunable weights per block (the weights of the mean that is kept).
        lower, upper: per-block bounds.
        score: the full score of a candidate (all held-out windows).
        screen: a cheap score used only to rank a generation's offspring.
        start_score: ``score(start)`` when the caller already knows it.
    """
    start, sizes = np.asarray(start, dtype=np.float64), np.asarray(sizes, dtype=np.float64)
    if len(start) < 2:
        raise ValueError(f"refinement moves sparsity between blocks; this profile has {len(start)} block(s)")
    rng = np.random.default_rng(settings.seed)
    parent, best = start.copy(), score(start) if start_score is None else start_score
    result = RefineResult(ratios=parent, score=best, start_score=best)
    bar = tqdm(range(settings.generations), desc="refine", unit="generation", disable=not progress)
    for _ in bar:
        kids = [mutate(parent, sizes, lower, upper, rng, step=settings.step, max_moves=settings.max_moves)
                for _ in range(settings.offspring)]
        kids = [k for k in kids if not np.array_equal(k, parent)] or kids
        pick = min(kids, key=screen)
        value = score(pick)
        if value < best:
            parent, best = pick, value
            result.accepted += 1
        result.history.append(best)
        bar.set_postfix(best=f"{best:.4f}", accepted=result.accepted)
    result.ratios, result.score = parent, best
    return result


def block_view(profile: SparsityProfile) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(block names, s_b, n_b, lower_b, upper_b) of a profile.

    A block's bounds leave room for its modules, which all move together: s_b may fall until
    its least sparse module reaches the profile's lower bound, and rise until its sparsest
    module reaches the upper bound.
    """
    ratios_by_block = profile.block_sparsities()
    names = list(ratios_by_block)
    index = {b: k for k, b in enumerate(names)}
    ratios = np.array([ratios_by_block[b] for b in names])
    sizes = np.zeros(len(names))
    room_down, room_up = np.full(len(names), np.inf), np.full(len(names), np.inf)
    for entry in profile.modules.values():
        k = index[entry.block]
        sizes[k] += entry.num_params
        room_down[k] = min(room_down[k], entry.sparsity - profile.bounds[0])
        room_up[k] = min(room_up[k], profile.bounds[1] - entry.sparsity)
    return names, ratios, sizes, ratios - room_down, ratios + room_up


def shifted(profile: SparsityProfile, blocks: list[str], ratios: np.ndarray, *, method: str = "refined",
            params: dict | None = None) -> SparsityProfile:
    """``profile`` with every module of block b moved by (new s_b − old s_b)."""
    old = profile.block_sparsities()
    delta = {b: float(r) - old[b] for b, r in zip(blocks, ratios, strict=True)}
    modules = {n: ModuleSparsity(min(max(e.sparsity + delta[e.block], profile.bounds[0]), profile.bounds[1]),
                                 e.num_params, e.block)
               for n, e in profile.modules.items()}
    return SparsityProfile(method=method, target=profile.target, modules=modules,
                           params=dict(params if params is not None else profile.params), bounds=profile.bounds,
                           projected=profile.projected)
