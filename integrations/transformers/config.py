"""``OwlSparseConfig``: the ``quantization_config`` of a compact checkpoint, as transformers sees it."""

from __future__ import annotations

from typing import Any

from transformers.utils.quantization_config import QuantizationConfigMixin

from owl_plugin.formats import compact_config
from owl_plugin.formats.compact_config import FORMAT, QUANT_METHOD, VERSION


class OwlSparseConfig(QuantizationConfigMixin):
    """SPEC.md's ``quantization_config`` (``quant_method: owl_sparse``), validated on creation.

    Args:
        compressed_modules: full names of the modules stored as values + bitmask + shape.
        format: must be ``"bitmask"``.
        version: must be 1.
        quant_method: must be ``"owl_sparse"`` (present in config.json; accepted for ``from_dict``).

    Raises:
        ValueError: another format or version, or an empty or malformed module list.
    """

    # Loading decompresses every weight: the model in memory is dense. transformers then drops
    # the quantization config (``HfQuantizer.postprocess_model``), so ``save_pretrained`` of a
    # loaded model writes an ordinary dense checkpoint. Class attribute: not serialised.
    dequantize = True

    def __init__(
        self,
        compressed_modules: list[str] | None = None,
        format: str = FORMAT,
        version: int = VERSION,
        quant_method: str = QUANT_METHOD,
        **_ignored: Any,
    ) -> None:
        self.quant_method = quant_method
        self.format = format
        self.version = version
        self.compressed_modules = list(compressed_modules or [])
        compact_config.compressed_modules(self.to_dict())  # raises ValueError naming the bad field
