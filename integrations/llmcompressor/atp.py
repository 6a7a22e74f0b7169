"""ATPAllocationModifier: arithmetic-progression ratios (ICML 2025, arXiv 2502.14770) for the next pruner.

Recipe:

    sparsity_stage:
      sparsity_modifiers:
        ATPAllocationModifier: {atp_beta: 0.005}
        WandaPruningModifier: {sparsity: 0.7, mask_structure: "0:0", targets: ["re:model\\\\.layers\\\\.\\\\d+$"]}

Needs no data: block l gets s_0 + l·β with the parameter-weighted mean at the target, so the
ratios are handed to the pruner at initialisation.
"""

from __future__ import annotations

from owl_plugin.config import ATPConfig

from owl_plugin.integrations.llmcompressor.base import AllocationModifier


class ATPAllocationModifier(AllocationModifier):
    """Sparsity rising linearly with depth (ATP) for the following Wanda/SparseGPT modifier.

    :param atp_beta: β, the sparsity step per decoder block; negative makes it fall with depth
        (default 0.005).
    Plus the common fields of ``AllocationModifier`` (sparsity, targets, ignore, granularity, bounds).
    """

    method = "atp"

    atp_beta: float = 0.005

    def core_config(self) -> ATPConfig:
        return ATPConfig(beta=self.atp_beta, granularity=self.granularity, bounds=self.bounds)
