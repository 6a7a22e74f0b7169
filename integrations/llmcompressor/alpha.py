"""AlphaAllocationModifier: AlphaPruning ratios (arXiv 2410.10912) for the pruner that follows it.

Recipe:

    sparsity_stage:
      sparsity_modifiers:
        AlphaAllocationModifier: {epsilon: 0.2}
        SparseGPTModifier: {sparsity: 0.7, mask_structure: "0:0", targets: ["re:model\\\\.layers\\\\.\\\\d+$"]}

Needs no data: the heavy-tail exponent α comes from each weight's eigenvalue spectrum, so the
ratios are handed to the pruner at initialisation.
"""

from __future__ import annotations

from typing import Literal

from owl_plugin.config import AlphaConfig

from owl_plugin.integrations.llmcompressor.base import AllocationModifier


class AlphaAllocationModifier(AllocationModifier):
    """Heavy-tail (α) based layerwise sparsity for the following Wanda/SparseGPT modifier.

    :param epsilon: ε, ratios span S(1 ± ε) before re-scaling to the target (default 0.2).
    :param xmin: power-law tail rule, ``"peak"`` (paper default) or ``"median"``.
    Plus the common fields of ``AllocationModifier`` (sparsity, targets, ignore, granularity, bounds).
    """

    method = "alpha"

    epsilon: float = 0.2
    xmin: Literal["peak", "median"] = "peak"

    def core_config(self) -> AlphaConfig:
        return AlphaConfig(epsilon=self.epsilon, xmin=self.xmin, granularity=self.granularity, bounds=self.bounds)
