"""The weight-conversion op that turns ``weight_values`` + ``weight_bitmask`` + ``weight_shape`` into ``weight``."""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers.core_model_loading import ConversionOps

from owl_plugin.formats.compact import (
    BITMASK_SUFFIX, SHAPE_SUFFIX, VALUES_SUFFIX, CompactFormatError, check_compressed, decompress,
)

PARTS = (VALUES_SUFFIX, BITMASK_SUFFIX, SHAPE_SUFFIX)
logger = logging.getLogger(__name__)


def _part(input_dict: dict[str, Any], suffix: str) -> torch.Tensor | None:
    """The tensor collected under the source pattern ``<suffix>$`` (transformers passes lists)."""
    for pattern, tensors in input_dict.items():
        if pattern.rstrip("$") == suffix:
            return tensors[0] if isinstance(tensors, list) else tensors
    return None


def _is_linear(model: torch.nn.Module, name: str) -> bool:
    try:
        return isinstance(model.get_submodule(name), torch.nn.Linear)
    except AttributeError:  # e.g. an expert matrix the model holds inside fused 3-D experts
        return False


class OwlSparseDecompress(ConversionOps):
    """Decompress one owl_sparse weight into the dtype of the model's parameter.

    With ``packed`` (a dict the quantizer owns), the weight of an ``nn.Linear`` is checked and packed for the
    sparse kernels right here, from its compact pieces (``owl_plugin.kernels.pack_compact``), and stored there
    under the module's name; the parameter gets a zero-strided placeholder of its shape that holds no memory.
    The loaded model never holds the layers dense (peak and resident memory stay near the packed size), and
    the quantizer swaps the placeholder's module for an ``OwlSparseLinear`` after loading.
    """

    def __init__(self, packed: dict[str, Any] | None = None) -> None:
        self.packed = packed

    def __deepcopy__(self, memo: dict) -> OwlSparseDecompress:
        """transformers deep-copies a converter for every layer it loads: the copies share ``packed``."""
        return OwlSparseDecompress(self.packed)

    def convert(
        self,
        input_dict: dict[str, Any],
        source_patterns: list[str] | None = None,
        target_patterns: list[str] | None = None,
        *,
        full_layer_name: str,
        model: torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        """Args:
            input_dict: source pattern → [tensor] for the three parts of one weight.
            full_layer_name: the target parameter, e.g. ``model.layers.0.mlp.up_proj.weight``.
            model: the (meta) model, for the parameter's shape and dtype.

        Returns:
            ``{full_layer_name: dense weight}``, cast to the parameter's dtype.
        """
        parts = {suffix: _part(input_dict, suffix) for suffix in PARTS}
        missing = [suffix for suffix, tensor in parts.items() if tensor is None]
        if missing:
            module = full_layer_name.rsplit(".", 1)[0]
            raise CompactFormatError(f"{full_layer_name}: the checkpoint lacks {[f'{module}.{m}' for m in missing]}; "
                                     "the compact checkpoint is incomplete, export it again")
        target = model.get_parameter(full_layer_name) if model is not None else None
        values, bitmask, shape = parts[VALUES_SUFFIX], parts[BITMASK_SUFFIX], parts[SHAPE_SUFFIX]
        expected_shape = None if target is None else tuple(target.shape)
        module = full_layer_name.removesuffix(".weight")
        if self.packed is not None and target is not None and _is_linear(model, module):
            from owl_plugin.kernels import pack_compact

            check_compressed(values.dtype, tuple(values.shape), bitmask, shape, name=full_layer_name,
                             expected_shape=expected_shape)
            try:  # values cast first: e.g. float32 values into a bfloat16 model
                self.packed[module] = pack_compact(values.to(target.dtype), bitmask, shape)
            except (TypeError, ValueError) as error:  # the quantizer's swap logs and keeps such a layer dense
                logger.warning("owl_sparse: cannot pack %s (%s); it stays dense", module, error)
            else:
                return {full_layer_name: torch.zeros((), dtype=target.dtype).expand(expected_shape)}
        dense = decompress(values, bitmask, shape, name=full_layer_name, expected_shape=expected_shape)
        if target is not None and dense.dtype != target.dtype:
            dense = dense.to(target.dtype)  # e.g. float32 values into a bfloat16 model
        return {full_layer_name: dense}
