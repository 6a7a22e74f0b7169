"""Speed-ups of the pruned model over the dense baseline, and the ``--min-speedup ENGINE=X`` gate.

    speedup = median_pruned / median_baseline      for tok/s metrics (decode, throughput)
    speedup = median_baseline / median_pruned      for latency metrics (prefill_ms)

so > 1 always means the pruned model is faster. The spread is the pessimistic/optimistic ratio
of the extremes (min of one over max of the other). ``--min-speedup`` applies to decode_tok_s
(PROTOCOL.md); an engine meets it when any of its variants does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from owl_plugin.validation.protocol import METRICS, SpeedRow

GATED_METRIC = "decode_tok_s"


@dataclass(frozen=True)
class Speedup:
    """Pruned vs baseline for one engine, variant and metric."""

    engine: str
    variant: str
    metric: str
    speedup: float
    low: float
    high: float
    pruned: float
    baseline: float


def speedups(engine: str, rows: Sequence[SpeedRow]) -> list[Speedup]:
    """Pair every ``pruned`` (or ``compact``) row with the ``baseline`` row of the same variant and metric."""
    baseline = {(r.variant, r.metric): r for r in rows if r.model == "baseline"}
    found = []
    for row in rows:
        if row.model == "baseline" or (row.variant, row.metric) not in baseline:
            continue
        base = baseline[(row.variant, row.metric)]
        if METRICS[row.metric]:
            ratio, low, high = row.median / base.median, row.min / base.max, row.max / base.min
        else:
            ratio, low, high = base.median / row.median, base.min / row.max, base.max / row.min
        found.append(Speedup(engine, row.variant, row.metric, ratio, low, high, row.median, base.median))
    return found


@dataclass(frozen=True)
class Threshold:
    """``--min-speedup ENGINE=X`` and whether it was met."""

    engine: str
    minimum: float
    best: float | None
    passed: bool
    detail: str


def apply_thresholds(minimums: Mapping[str, float], found: Sequence[Speedup]) -> list[Threshold]:
    """Check each ``engine → minimum decode speed-up``; an engine without decode rows fails."""
    results = []
    for engine, minimum in minimums.items():
        candidates = [s for s in found if s.engine == engine and s.metric == GATED_METRIC]
        if not candidates:
            results.append(Threshold(engine, minimum, None, False,
                                     f"--min-speedup {engine}={minimum:g}: no {GATED_METRIC} speed-up was measured "
                                     f"for {engine} (did it run, with --baseline and speed on?)"))
            continue
        best = max(candidates, key=lambda s: s.speedup)
        passed = best.speedup >= minimum
        results.append(Threshold(engine, minimum, best.speedup, passed,
                                 f"--min-speedup {engine}={minimum:g}: best {GATED_METRIC} speed-up "
                                 f"{best.speedup:.3f}x ({best.variant}) {'meets' if passed else 'misses'} it"))
    return results
