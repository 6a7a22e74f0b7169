"""``OwlSparseHfQuantizer``: lets ``from_pretrained`` read compact (owl_sparse) checkpoints.

Loading a compact checkpoint goes: ``update_tp_plan`` removes the load guard from the config
(before transformers looks for the weights file); ``_process_model_before_weight_loading``
checks every compressed tensor against SPEC.md and the model; a ``WeightConverter`` maps
``<module>.weight_values/_bitmask/_shape`` (patterns anchored with ``$``) onto
``<module>.weight`` through ``OwlSparseDecompress``; afterwards the converter is dropped from
the model's conversion list and the quantization config removed, so the model is an ordinary
dense model (``save_pretrained`` writes a dense checkpoint).
"""

from __future__ import annotations

import logging
from typing import Any

from transformers.core_model_loading import WeightConverter
from transformers.quantizers.base import HfQuantizer

from owl_plugin.formats.compact import BITMASK_SUFFIX, SHAPE_SUFFIX, VALUES_SUFFIX, WEIGHT_SUFFIX
from owl_plugin.formats.compact_config import GUARD_KEY, has_guard

from owl_plugin.integrations.transformers.decompress_op import OwlSparseDecompress
from owl_plugin.integrations.transformers.validation import validate_checkpoint

logger = logging.getLogger(__name__)


class OwlSparseHfQuantizer(HfQuantizer):
    """Decompresses owl_sparse weights while transformers loads them (pre-compressed checkpoints only)."""

    requires_calibration = True  # nothing to do for a dense model: it has to be exported compact first

    def update_tp_plan(self, config: Any) -> Any:
        """Remove the load guard (called by transformers before it resolves the weights files)."""
        if has_guard(config):
            delattr(config, GUARD_KEY)
        return config

    def _process_model_before_weight_loading(self, model: Any, checkpoint_files: list[str] | None = None,
                                             **kwargs: Any) -> Any:
        if checkpoint_files:
            validate_checkpoint(checkpoint_files, self.quantization_config.compressed_modules, model)
        return model

    def get_weight_conversions(self) -> list[WeightConverter]:
        """The one converter: ``*.weight_values/_bitmask/_shape`` → ``*.weight``."""
        return [
            WeightConverter(
                source_patterns=[f"{VALUES_SUFFIX}$", f"{BITMASK_SUFFIX}$", f"{SHAPE_SUFFIX}$"],
                target_patterns=WEIGHT_SUFFIX,
                operations=[OwlSparseDecompress()],
            )
        ]

    def _process_model_after_weight_loading(self, model: Any, **kwargs: Any) -> Any:
        # The weights are dense now; saving must not try to reverse the decompression.
        conversions = getattr(model, "_weight_conversions", None) or []
        model._weight_conversions = [
            c for c in conversions
            if not any(isinstance(op, OwlSparseDecompress) for op in getattr(c, "operations", ()))
        ]
        logger.info("loaded %d owl_sparse weights", len(self.quantization_config.compressed_modules))
        return model

    def is_serializable(self) -> bool:
        """The loaded model is dense and saves as a dense checkpoint."""
        return True

    @property
    def is_trainable(self) -> bool:
        """Dense weights: trainable as usual."""
        return True
