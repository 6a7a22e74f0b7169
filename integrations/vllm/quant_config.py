"""The ``owl_sparse`` quantization config for vLLM: which linear layers load compressed weights.

A compact checkpoint (``owl_plugin/formats/SPEC.md``) stores each pruned linear weight as
``<module>.weight_values`` / ``.weight_bitmask`` / ``.weight_shape``. vLLM picks the
quantization method from ``config.json``'s ``quant_method``, so once :func:`register_quantization`
has run, ``vllm.LLM(model=compact_dir)`` builds the model with :class:`OwlSparseConfig`, whose
:meth:`~OwlSparseConfig.get_quant_method` gives a linear layer
:class:`~owl_plugin.integrations.vllm.linear_method.OwlSparseLinearMethod` when the layer, or one
of the shards vLLM fuses into it (``qkv_proj`` ← ``q_proj``, ``k_proj``, ``v_proj``, from the
model's ``packed_modules_mapping``), is listed in ``compressed_modules``; every other linear layer
gets vLLM's plain ``UnquantizedLinearMethod``, and non-linear layers vLLM's defaults. A block's fused
experts (``RoutedExperts``) with compressed expert matrices get
:class:`~owl_plugin.integrations.vllm.moe_method.OwlSparseFusedMoEMethod`.

Before the model is built, a local checkpoint folder passes ``integrity.check_folder`` (complete,
no dense twins, per-tensor SHA-256 as exported, no paths outside the folder); a Hub checkpoint
passes it after its weights are loaded.

This module imports only vLLM's light quantization registry: vLLM imports it (through the plugin)
in every process, also in those that never build a model. The linear layers are imported when the
first layer is built.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from vllm.model_executor.layers.quantization import register_quantization_config
from vllm.model_executor.layers.quantization.base_config import QuantizationConfig, QuantizeMethodBase

from owl_plugin.formats.compact import VALUE_DTYPES
from owl_plugin.formats.compact_config import QUANT_METHOD, compressed_modules

logger = logging.getLogger(__name__)


def _checkpoint_dtype(hf_config: Any) -> torch.dtype | None:
    """The dtype config.json records for the stored weights, if it is one the format holds."""
    dtype = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if dtype in VALUE_DTYPES else None


class OwlSparseConfig(QuantizationConfig):
    """``quantization_config`` of a compact checkpoint: which modules are stored compressed."""

    def __init__(self, modules: Sequence[str]) -> None:
        super().__init__()
        self.compressed_modules = frozenset(modules)
        self.values_dtype: torch.dtype | None = None  # the checkpoint's dtype, from config.json
        self.pending_check: tuple[str, str | None] | None = None  # a Hub id checked once its files are cached

    def __repr__(self) -> str:
        return f"OwlSparseConfig({len(self.compressed_modules)} compressed modules)"

    def get_name(self) -> str:
        return QUANT_METHOD

    def get_supported_act_dtypes(self) -> list[torch.dtype]:
        return list(VALUE_DTYPES)

    @classmethod
    def get_min_capability(cls) -> int:
        return 0  # decompression is plain torch/numpy: any device

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []  # everything is in config.json

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> OwlSparseConfig:
        """Validate method, format and version (``compact_config.compressed_modules``) and build."""
        return cls(compressed_modules(config))

    def apply_vllm_mapper(self, hf_to_vllm_mapper: Any) -> None:
        """Rename the HF module names to vLLM's for models whose vLLM layout differs."""
        self.compressed_modules = frozenset(hf_to_vllm_mapper.apply_list(sorted(self.compressed_modules)))

    def maybe_update_config(self, model_name: str, hf_config: Any = None, revision: str | None = None) -> None:
        """Record the checkpoint dtype; check a local folder's integrity now (a Hub id: after loading)."""
        from owl_plugin.integrations.vllm.integrity import check_folder

        self.values_dtype = _checkpoint_dtype(hf_config)
        if Path(model_name).is_dir():
            check_folder(model_name)
        else:
            self.pending_check = (model_name, revision)

    def check_pending(self) -> None:
        """Check a Hub checkpoint's cached folder once (called after the weights are loaded)."""
        from owl_plugin.integrations.vllm.integrity import check_folder, hub_folder

        if self.pending_check is None:
            return
        model, revision = self.pending_check
        self.pending_check = None
        folder = hub_folder(model, revision)
        if folder is not None:
            check_folder(folder)

    def shard_names(self, prefix: str) -> list[str]:
        """Checkpoint module names loaded into the vLLM layer ``prefix`` (its fused shards, or itself)."""
        parent, _, leaf = prefix.rpartition(".")
        members = self.packed_modules_mapping.get(leaf)
        if not members:
            return [prefix]
        return [f"{parent}.{member}" if parent else member for member in members]

    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> QuantizeMethodBase | None:
        from vllm.model_executor.layers.linear import LinearBase, UnquantizedLinearMethod

        from owl_plugin.integrations.vllm.linear_method import OwlSparseLinearMethod

        from vllm.model_executor.layers.fused_moe import RoutedExperts

        if isinstance(layer, RoutedExperts):
            return self._moe_method(layer, prefix)
        if not isinstance(layer, LinearBase):
            return None  # embeddings, lm_head, attention: vLLM's defaults
        shards = self.shard_names(prefix)
        names = shards if prefix in shards else [prefix, *shards]  # a fused layer may be stored fused
        compressed = [name for name in names if name in self.compressed_modules]
        if not compressed:
            return UnquantizedLinearMethod()
        return OwlSparseLinearMethod(prefix, shards, compressed, self.values_dtype, on_loaded=self.check_pending)

    def _moe_method(self, layer: torch.nn.Module, prefix: str) -> QuantizeMethodBase | None:
        """vLLM's fused experts: the compact experts' method when any expert under ``prefix`` is compressed."""
        from owl_plugin.integrations.vllm.moe_method import OwlSparseFusedMoEMethod

        compressed = [name for name in self.compressed_modules if name.startswith(f"{prefix}.")]
        if not compressed:
            return None  # vLLM's unquantized fused MoE
        return OwlSparseFusedMoEMethod(layer.moe_config, prefix, compressed, self.values_dtype,
                                       on_loaded=self.check_pending)


def register_quantization() -> None:
    """Make ``quant_method: "owl_sparse"`` in config.json load with :class:`OwlSparseConfig` (idempotent)."""
    register_quantization_config(QUANT_METHOD)(OwlSparseConfig)
    logger.debug("registered vLLM quantization method %r", QUANT_METHOD)
