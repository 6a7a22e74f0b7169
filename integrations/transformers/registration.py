"""Register the owl_sparse quantization method with transformers (idempotent)."""

from __future__ import annotations

from owl_plugin.formats.compact_config import QUANT_METHOD


def register() -> None:
    """Make ``from_pretrained`` understand ``quant_method: owl_sparse``.

    Raises:
        ImportError: transformers is older than 5 (no weight-conversion API).
    """
    try:
        from transformers.core_model_loading import ConversionOps  # noqa: F401  (transformers >= 5)
    except ImportError as error:
        raise ImportError("owl-plugin's transformers loader needs transformers>=5 (weight conversions); "
                          "upgrade with `pip install -U transformers`") from error
    from transformers.quantizers import auto

    from owl_plugin.integrations.transformers.config import OwlSparseConfig
    from owl_plugin.integrations.transformers.quantizer import OwlSparseHfQuantizer

    if QUANT_METHOD not in auto.AUTO_QUANTIZATION_CONFIG_MAPPING:
        auto.register_quantization_config(QUANT_METHOD)(OwlSparseConfig)
    if QUANT_METHOD not in auto.AUTO_QUANTIZER_MAPPING:
        auto.register_quantizer(QUANT_METHOD)(OwlSparseHfQuantizer)


def is_registered() -> bool:
    """True when transformers knows owl_sparse (without importing transformers if it is not loaded)."""
    import sys

    auto = sys.modules.get("transformers.quantizers.auto")
    return auto is not None and QUANT_METHOD in auto.AUTO_QUANTIZER_MAPPING
