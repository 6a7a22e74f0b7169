"""Interleaved timing: dense baseline and pruned model measured in turns, in the same process.

Measuring A then B lets drift (other processes, thermal state, caches) pass for a speed-up.
Here every repetition measures every model once, and the order alternates between repetitions
(A B, B A, A B, ...), after one unrecorded warm-up round. Each metric is summarised by its
median and its min/max over the repetitions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from owl_plugin.validation.protocol import SpeedRow

logger = logging.getLogger(__name__)

#: one round of one model: metric name → value (prefill_ms, decode_tok_s, throughput_tok_s)
Round = Callable[[], Mapping[str, float]]


def interleaved(rounds: Mapping[str, Round], repetitions: int, *, warmup: int = 1) -> dict[str, dict[str, list[float]]]:
    """Run every model's round ``repetitions`` times in alternating order.

    Args:
        rounds: model name (``baseline`` / ``pruned``) → a function measuring one round.
        repetitions: recorded rounds per model.
        warmup: unrecorded rounds per model first.

    Returns:
        model → metric → samples.
    """
    from tqdm.auto import tqdm

    from owl_plugin.validation.checks import STEP_PREFIX

    names = list(rounds)
    print(f"{STEP_PREFIX}speed: warm-up, then {repetitions} interleaved rounds", flush=True)
    for _ in range(warmup):
        for name in names:
            rounds[name]()
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    for rep in tqdm(range(repetitions), desc="speed (interleaved)", unit="round", disable=None):
        for name in names if rep % 2 == 0 else reversed(names):
            for metric, value in rounds[name]().items():
                samples[name].setdefault(metric, []).append(float(value))
        logger.info("speed round %d/%d: %s", rep + 1, repetitions,
                    {n: {m: round(v[-1], 2) for m, v in s.items()} for n, s in samples.items()})
        print(f"{STEP_PREFIX}speed: round {rep + 1}/{repetitions} done", flush=True)
    return samples


def speed_rows(samples: Mapping[str, Mapping[str, list[float]]], variant: str) -> list[SpeedRow]:
    """Rows (median, min, max, samples) of :func:`interleaved`'s output."""
    return [SpeedRow.from_samples(model, variant, metric, values)
            for model, metrics in samples.items() for metric, values in metrics.items()]
