"""The linear method of ``owl_sparse``: decompress compact weights while vLLM loads them.

:class:`OwlSparseLinearMethod` *is* vLLM's ``UnquantizedLinearMethod`` (same dense ``weight``,
same kernels) plus three zero-size placeholder parameters, ``weight_values``, ``weight_bitmask``
and ``weight_shape``, created in their checkpoint dtypes, that receive the compressed pieces.
Once the three pieces of one shard have arrived it decompresses them with every check of
``owl_plugin/formats/SPEC.md`` and hands the dense tensor to the layer's own ``weight_loader``
(with the shard id vLLM gave, or the one its name mapper set on the tensor), so vLLM's fused
q/k/v and gate/up placement and tensor-parallel slicing apply exactly as for a dense checkpoint.
After loading it checks that every listed shard arrived (vLLM does not check completeness for
quantized checkpoints) and drops the placeholders.

Then :meth:`~OwlSparseLinearMethod.process_weights_after_loading` repacks the layer's local (fused,
tensor-parallel-sliced) dense weight with ``owl_plugin.kernels.pack_dense`` into the sparse kernel
layout, registers the packed tensors as buffers ``owl_packed_<name>`` and deletes the dense
``weight``: the weights stay compressed in memory, and :meth:`~OwlSparseLinearMethod.apply` computes
``y = x W^T (+ b)`` with ``owl_plugin.kernels.sparse_linear`` (a ``torch.ops.owl`` op with a fake
implementation, so vLLM's torch.compile traces it). ``OWL_SPARSE_DENSE=1`` in the environment keeps
the old behaviour (dense weight, vLLM's own dense GEMM), as does a dtype or CPU the kernels do not
support (logged once), and a layer shape where the kernel measured slower than dense at batch 1 on a
CPU without AVX-512 (``owl_plugin/kernels/fallback.py``, logged once per shape). With ``--enable-lora``
vLLM's LoRA wrappers take the packed layers too: they compute the base output through :meth:`apply`
(on the sparse kernels) and add the adapter's.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch
from vllm.model_executor.layers.linear import UnquantizedLinearMethod, register_weight_loader_v2_supported_method
from vllm.model_executor.utils import set_weight_attrs

from owl_plugin.kernels.report import dense_requested
from owl_plugin.formats.compact import BITMASK_SUFFIX, SHAPE_SUFFIX, VALUES_SUFFIX, CompactFormatError, decompress

logger = logging.getLogger(__name__)
PACKED_PREFIX = "owl_packed_"  # buffer names of the packed tensors on the layer
PIECES = {"values": VALUES_SUFFIX, "bitmask": BITMASK_SUFFIX, "shape": SHAPE_SUFFIX}  # piece → parameter name
_FIX = "export the checkpoint again with `owl export MODEL --format compact`"


@register_weight_loader_v2_supported_method  # the dense weight then takes the same loader as unquantized
class OwlSparseLinearMethod(UnquantizedLinearMethod):
    """Unquantized linear method whose compressed shards are decompressed while the weights load.

    Args:
        prefix: the vLLM layer's name, e.g. ``model.layers.0.self_attn.qkv_proj``.
        shards: checkpoint module names fused into the layer, in shard order (or ``[prefix]``).
        compressed: which of ``shards`` (or ``prefix`` itself) the checkpoint stores compressed.
        values_dtype: dtype of ``weight_values`` in the checkpoint (default: the model's dtype).
        on_loaded: called after the weights are loaded, before the layer is prepared (the config's deferred
            integrity check of a Hub checkpoint).
    """

    def __init__(self, prefix: str, shards: Sequence[str], compressed: Sequence[str],
                 values_dtype: torch.dtype | None, *, on_loaded: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.on_loaded = on_loaded
        self.prefix = prefix
        self.shards = list(shards)
        self.compressed = list(compressed)
        self.values_dtype = values_dtype
        self._pending: dict[Hashable, dict[str, torch.Tensor]] = {}  # shard id → pieces received so far
        self._loaded: set[str] = set()

    def create_weights(self, layer: torch.nn.Module, input_size_per_partition: int,
                       output_partition_sizes: list[int], input_size: int, output_size: int,
                       params_dtype: torch.dtype, **extra_weight_attrs: Any) -> None:
        super().create_weights(layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                               params_dtype, **extra_weight_attrs)
        dtypes = {"values": self.values_dtype or params_dtype, "bitmask": torch.uint8, "shape": torch.int64}
        for piece, name in PIECES.items():
            placeholder = torch.nn.Parameter(torch.empty(0, dtype=dtypes[piece]), requires_grad=False)
            set_weight_attrs(placeholder, {"weight_loader": functools.partial(self._load_piece, layer, piece)})
            layer.register_parameter(name, placeholder)

    def _shard_name(self, shard_id: Hashable | None) -> str:
        """Checkpoint module name of a shard id (``"q"`` → ``...q_proj``, ``0`` → ``...gate_proj``)."""
        if shard_id is None:
            return self.prefix if len(self.shards) > 1 else self.shards[0]
        if isinstance(shard_id, int) and 0 <= shard_id < len(self.shards):
            return self.shards[shard_id]
        if isinstance(shard_id, str):
            for name in self.shards:
                leaf = name.rpartition(".")[2]
                if leaf == shard_id or leaf.startswith(f"{shard_id}_"):
                    return name
        return f"{self.prefix}[shard {shard_id!r}]"

    def _load_piece(self, layer: torch.nn.Module, piece: str, param: torch.nn.Parameter,
                    loaded_weight: torch.Tensor, shard_id: Hashable | None = None) -> None:
        """Weight loader of the placeholders: buffer one piece; load the shard once it is complete."""
        if shard_id is None:
            shard_id = getattr(loaded_weight, "shard_id", None)  # set by vLLM's stacked-name mapper
        name = self._shard_name(shard_id)
        if name not in self.compressed:
            raise CompactFormatError(
                f"{name}.{PIECES[piece]} is in the checkpoint, but {name} is not in config.json's "
                f"quantization_config.compressed_modules; the checkpoint is inconsistent, {_FIX}")
        pieces = self._pending.setdefault(shard_id, {})
        if piece in pieces:
            raise CompactFormatError(f"{name}.{PIECES[piece]} appears twice in the checkpoint; {_FIX}")
        pieces[piece] = loaded_weight
        if len(pieces) == len(PIECES):
            del self._pending[shard_id]
            self._load_dense(layer, name, shard_id, pieces)

    def _load_dense(self, layer: torch.nn.Module, name: str, shard_id: Hashable | None,
                    pieces: dict[str, torch.Tensor]) -> None:
        """Decompress one shard and pass it to the layer's own weight loader."""
        unfused = len(self.shards) == 1 and shard_id is None
        expected = (layer.output_size, layer.input_size) if unfused else None
        dense = decompress(pieces["values"], pieces["bitmask"], pieces["shape"], name=f"{name}.weight",
                           expected_shape=expected)
        loader = layer.weight.weight_loader
        try:
            if shard_id is None:
                loader(layer.weight, dense)
            else:
                loader(layer.weight, dense, shard_id)
        except (AssertionError, ValueError, RuntimeError) as error:
            raise does_not_fit(f"{name}.weight", dense, self.prefix, error) from error
        self._loaded.add(name)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        """Check every compressed shard was loaded, drop the placeholders, then prepare as unquantized."""
        if self.on_loaded is not None:
            self.on_loaded()
        if self._pending:
            raise incomplete_pieces("weights", {f"{self._shard_name(shard)}.weight": pieces
                                                for shard, pieces in self._pending.items()})
        missing = [name for name in self.compressed if name not in self._loaded]
        if missing:
            raise CompactFormatError(
                f"{', '.join(missing)}: listed in config.json's quantization_config.compressed_modules, but "
                f"{'/'.join(PIECES.values())} are not in the checkpoint; {_FIX}")
        for name in PIECES.values():
            delattr(layer, name)
        # vLLM marks the linears whose weight something else reads directly (MLA's kv_b_proj) to keep them dense
        keep_dense = dense_requested() or getattr(layer, "_cpu_skip_gemm_dispatch", False)
        packed = None if keep_dense else _pack(layer.weight.data, self.prefix)
        if packed is None:
            super().process_weights_after_loading(layer)
            return
        for name, tensor in packed.tensors.items():
            layer.register_buffer(f"{PACKED_PREFIX}{name}", tensor, persistent=False)
        layer.owl_packed = packed  # plain attribute: the op's arguments, same tensors as the buffers
        del layer.weight  # the dense copy is not kept
        if _lora_enabled():  # vLLM's LoRA wrapper finds the device of a layer without `weight` by this name
            layer.weight_packed = packed.tensors["masks"]  # (vllm/lora/layers/utils.py); its base goes to apply()
        self.packed = True
        from owl_plugin.kernels.heap import return_freed_heap

        return_freed_heap()  # the dense weight vLLM's loader filled, and the packing's transients

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x W^T (+ bias)`` with the sparse kernel when the layer was packed, else vLLM's dense GEMM."""
        packed = getattr(layer, "owl_packed", None)
        if packed is None:
            return super().apply(layer, x, bias)
        from owl_plugin.kernels import sparse_linear

        return sparse_linear(x.contiguous(), packed, bias)  # no copy when already contiguous


def incomplete_pieces(what: str, pending: dict[str, dict[str, torch.Tensor]]) -> CompactFormatError:
    """The error for weights of which only some of the three pieces arrived (name → pieces received)."""
    incomplete = "; ".join(f"{name} has {sorted(PIECES[p] for p in pieces)} but lacks "
                           f"{sorted(PIECES[p] for p in PIECES.keys() - pieces.keys())}"
                           for name, pieces in pending.items())
    return CompactFormatError(f"incomplete compressed {what} in the checkpoint: {incomplete}; {_FIX}")


def does_not_fit(name: str, dense: torch.Tensor, prefix: str, error: Exception) -> CompactFormatError:
    """The error for a decompressed weight that vLLM's layer ``prefix`` refuses to load."""
    return CompactFormatError(
        f"{name}: the decompressed {list(dense.shape)} weight does not fit vLLM's layer {prefix} "
        f"({error or type(error).__name__}); the checkpoint does not belong to this config.json, {_FIX}")


def _lora_enabled() -> bool:
    """Whether the engine being built serves LoRA adapters (``--enable-lora``)."""
    from vllm.config import get_current_vllm_config

    return get_current_vllm_config().lora_config is not None


@functools.cache
def _warn_once(message: str) -> None:
    logger.warning(message)


def _pack(weight: torch.Tensor, prefix: str):
    """The kernel layout of ``weight``, or None (logged once) when the kernels cannot take it here."""
    try:
        from owl_plugin.kernels import fallback, kernel_info, pack_dense
    except ImportError as error:
        _warn_once(f"owl_sparse: the sparse kernels are unavailable ({error}); weights stay dense")
        return None
    try:
        packed = pack_dense(weight)
    except (TypeError, ValueError, NotImplementedError, RuntimeError) as error:
        _warn_once(f"owl_sparse: cannot pack {prefix} ({error}); such layers stay dense")
        return None
    slower = fallback.keep_dense(weight, packed)
    if slower is not None:
        _warn_once(f"owl_sparse: {list(weight.shape)} {weight.dtype} layers stay dense: the sparse kernel ran at "
                   f"{slower['speedup']:.2f}x of dense at batch 1 on the {slower['isa']} path "
                   f"(< {fallback.min_speedup()}x)")
        return None
    _warn_once(f"owl_sparse: sparse kernel path {kernel_info()}")
    return packed
