"""Allocation modifiers that score units with Wanda's |W|·‖X‖ need activation statistics.

OWL and DLP read, for every pruned linear, the mean of x_j² over calibration tokens. They
are gathered on the *dense* model by the core's layer-at-a-time collector over oneshot's
calibration data: block 0's inputs are captured, then each block runs on the previous
block's outputs, so only one block's activations exist at a time, and the data is read once
here and once by the pruner.

The pass costs one dense forward per block per window, against two for Wanda itself
(calibrate, propagate), so on large calibration sets an OWL prune tends to 1.5× the time of
a uniform one. ``statistics_samples`` caps the windows used for the statistics (the first
k of oneshot's calibration set); the pruner still sees all of them.
"""

from __future__ import annotations

import torch
from llmcompressor.core import State
from pydantic import field_validator

from owl_plugin.statistics import collect_input_sq_means

from owl_plugin.integrations.llmcompressor.base import AllocationModifier
from owl_plugin.integrations.llmcompressor.experts import routed_statistics


class ActivationAllocationModifier(AllocationModifier):
    """Base class for allocations that need per-linear activation statistics (OWL, DLP).

    :param statistics_samples: use only the first k calibration windows for the statistics
        (default: all of them, as in the papers).
    """

    statistics_samples: int | None = None

    @field_validator("statistics_samples")
    @classmethod
    def _positive(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"statistics_samples={value!r} must be a positive number of calibration windows "
                             "(or None: all)")
        return value

    def statistics(self, state: State) -> dict[str, torch.Tensor]:
        if state.data is None or state.data.calib is None:
            raise ValueError(f"{type(self).__name__} needs calibration data: pass dataset=... to oneshot")
        limit = self.statistics_samples
        batches, windows = [], 0
        for batch in state.data.calib:
            ids = batch["input_ids"]
            if limit is not None:
                if windows >= limit:
                    break
                ids = ids[: limit - windows]
            batches.append(ids)
            windows += ids.shape[0]
        self._provenance["statistics_windows"] = windows
        with routed_statistics():  # an MoE expert's statistics are over the tokens routed to it
            return collect_input_sq_means(state.model, batches)
