"""``OwlSparseHfQuantizer``: lets ``from_pretrained`` read compact (owl_sparse) checkpoints.

Loading a compact checkpoint goes: ``update_tp_plan`` removes the load guard from the config
(before transformers looks for the weights file); ``_process_model_before_weight_loading``
checks that every shard path stays inside the checkpoint folder, every compressed tensor against SPEC.md
and the model, then the folder's integrity (complete, no dense twin, per-tensor SHA-256 checksums as
recorded by the export; ``owl_plugin.formats.integrity``); a ``WeightConverter`` maps
``<module>.weight_values/_bitmask/_shape`` (patterns anchored with ``$``) onto
``<module>.weight`` through ``OwlSparseDecompress``; afterwards the converter is dropped from
the model's conversion list and the quantization config removed, and every compressed module's
``nn.Linear`` is replaced by :class:`~owl_plugin.integrations.transformers.sparse_linear.OwlSparseLinear`,
which holds only the packed weight and calls the project's sparse kernel (``owl_plugin.kernels``).
``save_pretrained`` writes an ordinary dense checkpoint (the packed weights unpack exactly).

``OWL_SPARSE_DENSE=1`` in the environment keeps the dense ``nn.Linear`` layers (the behaviour before
the kernels); so does a machine or dtype the kernels cannot take (logged).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from transformers.core_model_loading import WeightConverter
from transformers.quantizers.base import HfQuantizer

from owl_plugin.checkpoint import CheckpointFolder
from owl_plugin.kernels.heap import return_freed_heap
from owl_plugin.kernels.report import dense_requested, sparse_moe_requested
from owl_plugin.formats.compact import BITMASK_SUFFIX, SHAPE_SUFFIX, VALUES_SUFFIX, WEIGHT_SUFFIX
from owl_plugin.formats.compact_config import GUARD_KEY, has_guard

from owl_plugin.integrations.transformers.decompress_op import OwlSparseDecompress
from owl_plugin.integrations.transformers.moe import expert_conversions, merged_into_fused_experts, restore_conversions
from owl_plugin.integrations.transformers.sparse_linear import OwlSparseLinear
from owl_plugin.integrations.transformers.validation import (
    check_files_inside,
    checkpoint_folder,
    module_name,
    validate_checkpoint,
)

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
            folder = checkpoint_folder(model, checkpoint_files)
            if folder is not None:
                check_files_inside(folder, checkpoint_files)
            validate_checkpoint(checkpoint_files, self.quantization_config.compressed_modules, model)
            if folder is not None:  # completeness, dense twins, per-tensor SHA-256 (OWL_VERIFY_CHECKSUMS=0: no hashing)
                CheckpointFolder(folder).close()
        # the dtype transformers built each parameter in (the requested dtype, or float32 where the model keeps it):
        # with a pre-quantized config it loads renamed tensors (Mixtral's block_sparse_moe.gate → mlp.gate, fused
        # experts) in the checkpoint's dtype instead, so the loaded model can mix dtypes and fail in forward
        self._built_dtypes = {name: p.dtype for name, p in model.named_parameters() if p.is_floating_point()}
        return model

    def get_weight_conversions(self) -> list[WeightConverter]:
        """The one converter: ``*.weight_values/_bitmask/_shape`` → ``*.weight`` (packed on the way when the
        layers will run on the sparse kernels: ``OwlSparseDecompress``)."""
        return [
            WeightConverter(
                source_patterns=[f"{VALUES_SUFFIX}$", f"{BITMASK_SUFFIX}$", f"{SHAPE_SUFFIX}$"],
                target_patterns=WEIGHT_SUFFIX,
                operations=[OwlSparseDecompress(self._packed_while_loading())],
            )
        ]

    def _packed_while_loading(self) -> dict | None:
        """The dict ``OwlSparseDecompress`` packs into (module → PackedLinear), or None to load dense weights
        (``OWL_SPARSE_DENSE=1``, or no kernels on this machine)."""
        if dense_requested():
            return None
        try:
            import owl_plugin.kernels  # noqa: F401
        except ImportError:
            return None
        if not hasattr(self, "_packed"):
            self._packed: dict = {}
        return self._packed

    def update_weight_conversions(self, weight_conversions: list) -> list:
        """MoE: the model's expert-merging converters also read compact parts (``moe.expert_conversions``)."""
        return expert_conversions(list(weight_conversions)) + self.get_weight_conversions()

    def _process_model_after_weight_loading(self, model: Any, **kwargs: Any) -> Any:
        # The weights are dense now; saving must not try to reverse the decompression.
        conversions = restore_conversions(getattr(model, "_weight_conversions", None) or [])
        model._weight_conversions = [
            c for c in conversions
            if not any(isinstance(op, OwlSparseDecompress) for op in getattr(c, "operations", ()))
        ]
        logger.info("loaded %d owl_sparse weights", len(self.quantization_config.compressed_modules))
        packed = getattr(self, "_packed", {})
        if not dense_requested():  # MoE experts merged into fused 3-D parameters: packed below
            modules = [module_name(model, m) for m in self.quantization_config.compressed_modules]
            swap_in_sparse_linears(model, [m for m in modules if not merged_into_fused_experts(model, m)], packed)
        unswapped = [name for name in packed if isinstance(model.get_submodule(name), torch.nn.Linear)]
        for name in unswapped:  # packed while loading but kept dense by the swap: its weight back from the packing
            from owl_plugin.kernels import decompress_rows

            linear = model.get_submodule(name)
            linear.weight = torch.nn.Parameter(decompress_rows(packed[name]), requires_grad=False)
        packed.clear()
        restore_built_dtypes(model, getattr(self, "_built_dtypes", {}))
        if sparse_moe_requested(default=True):  # fused MoE experts too (OWL_SPARSE_MOE=0 keeps them dense)
            from owl_plugin.integrations.transformers.sparse_experts import swap_in_sparse_experts

            swapped = swap_in_sparse_experts(model)
            logger.info("owl_sparse: packed the experts of %d MoE layers", len(swapped))
        return_freed_heap()  # the checks' and packing's transients
        return model

    def is_serializable(self) -> bool:
        """The loaded model is dense and saves as a dense checkpoint."""
        return True

    @property
    def is_trainable(self) -> bool:
        """Only with dense weights (``OWL_SPARSE_DENSE=1``): packed weights have no gradient."""
        return dense_requested()


def restore_built_dtypes(model: torch.nn.Module, built: dict[str, torch.dtype]) -> list[str]:
    """Cast every floating parameter that loaded in another dtype than ``model`` was built with back to that one,
    as a dense checkpoint loads; returns their names. (Packed linears are already in the model's dtype.)"""
    cast = []
    for name, param in model.named_parameters():
        dtype = built.get(name)
        if dtype is not None and param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)  # in place: a tied parameter stays tied
            cast.append(name)
    if cast:
        logger.debug("owl_sparse: cast %d parameters loaded in the checkpoint's dtype: %s", len(cast), cast[:8])
    return cast


def swap_in_sparse_linears(model: torch.nn.Module, modules: list[str], packed: dict | None = None) -> int:
    """Replace each listed ``nn.Linear`` of ``model`` by an :class:`OwlSparseLinear`; returns how many.

    ``packed``: module → ``PackedLinear`` already packed while loading (its ``nn.Linear`` holds a placeholder
    weight); the others are packed from their dense weight here.

    Raises:
        ValueError: a listed module is missing or is not an ``nn.Linear``.
    """
    try:
        from owl_plugin.kernels import fallback, kernel_info
    except ImportError as error:
        logger.warning("owl_sparse: the sparse kernels are unavailable (%s); weights stay dense", error)
        return 0
    swapped = 0
    kept_dense: list[str] = []
    for name in modules:
        try:
            linear = model.get_submodule(name)
        except AttributeError as error:
            raise ValueError(f"{name}: listed in compressed_modules but not a module of the model") from error
        if not isinstance(linear, torch.nn.Linear):
            raise ValueError(f"{name}: listed in compressed_modules but is a {type(linear).__name__}, not nn.Linear")
        preloaded = (packed or {}).get(name)
        try:
            sparse = OwlSparseLinear(preloaded, linear.bias) if preloaded else OwlSparseLinear.from_linear(linear)
        except (TypeError, ValueError, NotImplementedError, RuntimeError) as error:
            logger.warning("owl_sparse: cannot pack %s (%s); it stays dense", name, error)
            continue
        slower = fallback.keep_dense(None if preloaded else linear.weight.detach(), sparse.packed)
        if slower is not None:  # a CPU without AVX-512 where this shape runs faster dense (fallback.py)
            kept_dense.append(name)
            continue
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, sparse)
        swapped += 1
    if kept_dense:
        logger.warning("owl_sparse: %d layers stay dense (e.g. %s): at batch 1 the sparse kernel ran slower than "
                       "%sx of dense for their shapes on this CPU: %s", len(kept_dense), kept_dense[0],
                       fallback.min_speedup(), kernel_info()["dense_fallback"])
    logger.info("owl_sparse: %d of %d linear layers run on the sparse kernel %s", swapped, len(modules), kernel_info())
    return swapped
