"""OWLAllocationModifier: OWL ratios (arXiv 2310.05175) for the pruner that follows it.

Recipe:

    sparsity_stage:
      sparsity_modifiers:
        OWLAllocationModifier: {owl_m: 5, owl_lambda: 0.08}
        WandaPruningModifier: {sparsity: 0.7, mask_structure: "0:0", targets: ["re:model\\\\.layers\\\\.\\\\d+$"]}

Statistics (mean x_j² at every pruned linear's input) are gathered on the dense model by the
core's layer-at-a-time collector over oneshot's calibration data: block 0's inputs are
captured, then each block runs on the previous block's outputs, so only one block's
activations exist at a time, and the data is read once here and once by the pruner.
"""

from __future__ import annotations

import torch
from llmcompressor.core import State

from owl_plugin.config import OWLConfig
from owl_plugin.statistics import collect_input_sq_means

from owl_plugin.integrations.llmcompressor.base import AllocationModifier


class OWLAllocationModifier(AllocationModifier):
    """Outlier-weighed layerwise sparsity for the following Wanda/SparseGPT modifier.

    :param owl_m: M, a Wanda score above M × the unit's mean score is an outlier (paper: 5).
    :param owl_lambda: λ, the ratios span 2λ around the target (paper: 0.08).
    Plus the common fields of ``AllocationModifier`` (sparsity, targets, ignore, granularity, bounds).
    """

    method = "owl"

    owl_m: float = 5.0
    owl_lambda: float = 0.08

    def core_config(self) -> OWLConfig:
        return OWLConfig(m=self.owl_m, lam=self.owl_lambda, granularity=self.granularity, bounds=self.bounds)

    def statistics(self, state: State) -> dict[str, torch.Tensor]:
        if state.data is None or state.data.calib is None:
            raise ValueError(f"{type(self).__name__} needs calibration data: pass dataset=... to oneshot")
        batches = [batch["input_ids"] for batch in state.data.calib]
        return collect_input_sq_means(state.model, batches)
