"""DLPAllocationModifier: DLP ratios (ICML 2025, arXiv 2505.23807) for the pruner that follows it.

Recipe:

    sparsity_stage:
      sparsity_modifiers:
        DLPAllocationModifier: {dlp_band: 0.08}
        WandaPruningModifier: {sparsity: 0.7, mask_structure: "0:0", targets: ["re:model\\\\.layers\\\\.\\\\d+$"]}

DLP ranks units by the median of their Wanda scores, which need the same activation
statistics as OWL; they are gathered the same way (``ActivationAllocationModifier``:
one layer-at-a-time pass of the dense model over oneshot's calibration data).
"""

from __future__ import annotations

from owl_plugin.config import DLPConfig

from owl_plugin.integrations.llmcompressor.activations import ActivationAllocationModifier


class DLPAllocationModifier(ActivationAllocationModifier):
    """Median-Wanda-score layerwise sparsity (DLP) for the following Wanda/SparseGPT modifier.

    :param dlp_band: the ratios span [S − band, S + band]; the unit with the highest median score
        (the least important) gets S + band (default 0.08).
    Plus ``statistics_samples`` (``ActivationAllocationModifier``) and the common fields of
    ``AllocationModifier`` (sparsity, targets, ignore, granularity, bounds).
    """

    method = "dlp"

    dlp_band: float = 0.08

    def core_config(self) -> DLPConfig:
        return DLPConfig(band=self.dlp_band, granularity=self.granularity, bounds=self.bounds)
