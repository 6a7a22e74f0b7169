"""``owl prune --compare-uniform``: is the allocation better than not allocating at all?

A paper-default allocation can lose to uniform on a model it was not tuned for (issue 24: on
Gemma-3 270M at 70%, OWL +13% and AlphaPruning +68% perplexity against uniform Wanda). The
check makes that visible before anyone serves the result:

1. the calibration text is split once (``owl_plugin.text.heldout_split``): the pruner calibrates
   on the head; the last ``HELDOUT_FRACTION`` (at least ``HELDOUT_WINDOWS`` windows) is held out;
2. a second copy of the model is pruned by the same recipe with its allocation modifier removed
   and the pruner's ``sparsity`` set to the allocation's target S, i.e. uniform at S;
3. both models are scored by perplexity on the held-out windows (``owl_plugin.evaluation``, the
   same window protocol as calibration), and the relative difference

       Δ = ppl_allocated / ppl_uniform − 1        (negative: the allocation helps)

   is printed and recorded in the profile (``params["compare_uniform"]``).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

#: share of the calibration tokens held out, and the windows scored on them (as ``owl tune``)
HELDOUT_FRACTION = 0.1
HELDOUT_WINDOWS = 8

#: the pruners an allocation modifier hands its ratios to; their ``sparsity`` takes the uniform target
PRUNERS = ("WandaPruningModifier", "SparseGPTModifier")


@dataclass(frozen=True)
class UniformComparison:
    """Held-out perplexity of the allocated and the uniform model (same pruner, same calibration)."""

    method: str
    target: float
    ppl: float
    uniform_ppl: float
    windows: int
    seq_len: int
    heldout_fraction: float

    @property
    def relative(self) -> float:
        """Δ = ppl / uniform_ppl − 1 (negative: the allocation is better)."""
        return self.ppl / self.uniform_ppl - 1.0

    @property
    def allocation_wins(self) -> bool:
        return self.ppl <= self.uniform_ppl

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "relative": self.relative}

    def summary(self) -> str:
        verdict = ("the allocation helps" if self.allocation_wins else
                   "UNIFORM IS BETTER: prefer `owl tune` (it keeps uniform when nothing beats it) or a uniform recipe")
        return (f"held-out perplexity ({self.windows}x{self.seq_len} tokens from the last "
                f"{self.heldout_fraction:.0%} of the calibration text, never calibrated on): {self.method} "
                f"{self.ppl:.3f} vs uniform {self.uniform_ppl:.3f} ({100 * self.relative:+.1f}%); {verdict}")


def uniform_recipe(recipe: dict[str, Any], target: float, allocation_names: set[str]) -> dict[str, Any]:
    """``recipe`` with every allocation modifier removed and every pruner's ``sparsity`` set to ``target``.

    An allocation modifier may carry its own ``targets`` / ``ignore`` (which replace the pruner's);
    they move to the pruner, so the uniform model prunes exactly the same modules.

    Raises:
        ValueError: if the recipe has no allocation modifier (it is uniform already) or no pruner.
    """
    uniform = copy.deepcopy(recipe)
    removed, pruners = [], 0
    for stage, body in uniform.items():
        if not (stage.endswith("_stage") and isinstance(body, dict)):
            continue
        for group, modifiers in body.items():
            if not (group.endswith("_modifiers") and isinstance(modifiers, dict)):
                continue
            moved: dict[str, Any] = {}
            for name in [n for n in modifiers if n in allocation_names]:
                fields = modifiers.pop(name) or {}
                removed.append(name)
                moved.update({k: fields[k] for k in ("targets", "ignore") if fields.get(k) is not None})
            for name, fields in modifiers.items():
                if name in PRUNERS:
                    pruners += 1
                    fields.update(moved, sparsity=float(target))
    if not removed:
        raise ValueError("--compare-uniform: the recipe has no allocation modifier, so it prunes uniformly already; "
                         "add e.g. `OWLAllocationModifier: {}` before the pruner, or drop --compare-uniform")
    if not pruners:
        raise ValueError(f"--compare-uniform: the recipe has no pruner ({', '.join(PRUNERS)}) to prune uniformly")
    return uniform
