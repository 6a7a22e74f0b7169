"""OWLAllocationModifier: OWL ratios (arXiv 2310.05175) for the pruner that follows it.

Recipe:

    sparsity_stage:
      sparsity_modifiers:
        OWLAllocationModifier: {owl_m: 5, owl_lambda: 0.08}
        WandaPruningModifier: {sparsity: 0.7, mask_structure: "0:0", targets: ["re:model\\\\.layers\\\\.\\\\d+$"]}

Statistics (mean x_j² at every pruned linear's input) are gathered on the dense model one
decoder block at a time (``ActivationAllocationModifier``); ``statistics_samples: k`` limits
them to the first k calibration windows.
"""

from __future__ import annotations

from owl_plugin.config import OWLConfig

from owl_plugin.integrations.llmcompressor.activations import ActivationAllocationModifier


class OWLAllocationModifier(ActivationAllocationModifier):
    """Outlier-weighed layerwise sparsity for the following Wanda/SparseGPT modifier.

    :param owl_m: M, a Wanda score above M × the unit's mean score is an outlier (paper: 5).
    :param owl_lambda: λ, the ratios span 2λ around the target (paper: 0.08).
    Plus ``statistics_samples`` (``ActivationAllocationModifier``) and the common fields of
    ``AllocationModifier`` (sparsity, targets, ignore, granularity, bounds).
    """

    method = "owl"

    owl_m: float = 5.0
    owl_lambda: float = 0.08

    def core_config(self) -> OWLConfig:
        return OWLConfig(m=self.owl_m, lam=self.owl_lambda, granularity=self.granularity, bounds=self.bounds)
