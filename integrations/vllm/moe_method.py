"""The MoE method of ``owl_sparse``: load compact experts into vLLM's own fused-MoE layer.

A compact export of a mixture-of-experts model (Qwen3-MoE, Mixtral) stores each pruned expert
matrix like any pruned linear: ``<layer>.experts.<e>.<proj>.weight_values`` / ``.weight_bitmask`` /
``.weight_shape``. vLLM holds the experts of a block as one layer (``RoutedExperts``: ``w13_weight``
``[E, 2I, H]`` for gate and up, ``w2_weight`` ``[E, H, I]`` for down) whose loader maps each
checkpoint name to a parameter by its suffix, so without this method it stops at the first piece
("has no parameter 'w2_weight_bitmask'").

:class:`OwlSparseFusedMoEMethod` *is* vLLM's ``UnquantizedFusedMoEMethod`` (same dense expert weights,
same MoE kernels) plus zero-size placeholder parameters ``w13_weight_values`` ... ``w2_weight_shape``
that receive the pieces. Once an expert matrix's three pieces have arrived it decompresses them with
every check of ``owl_plugin/formats/SPEC.md`` and hands the dense matrix to the layer's own weight
loader (same expert id and shard id), so vLLM's gate/up stacking, expert placement and
tensor-parallel slicing apply exactly as for a dense checkpoint. After loading it checks that every
listed expert matrix arrived and drops the placeholders.

The experts are then packed (``OWL_SPARSE_MOE=0`` keeps them dense): 0.36-0.37x of the dense bf16
expert bytes at 70%, and faster than vLLM's own CPU experts (a grouped GEMM on prepacked dense bf16) in
examples/results/moe_experts*.md (EPYC, 2 threads, one layer, 1-64 tokens): Mixtral's 4096x14336 experts
1.04-1.64x, Qwen3-30B-A3B's 2048x768 experts 1.12-1.54x (two runs). Before the per-expert loop moved into
C++ (csrc/routed_experts.cpp) small experts lost (0.67x at 1 token, 0.91-0.96x at 4-64) and packing was
opt-in here.
vLLM's MoE kernel is modular (router, token preparation, shared experts and final reduction are
separate pieces); the piece that runs the experts is swapped for :class:`SparseExperts`, a subclass
of the CPU experts class vLLM chose. Once vLLM has laid out ``w13_weight`` ``[E, 2I, H]`` and
``w2_weight`` ``[E, H, I]``, it packs every expert matrix with ``owl_plugin.kernels.pack_dense``
and replaces the two dense parameters by zero-stride placeholders of the same shape (vLLM reads the
problem size from them); ``apply`` runs :func:`owl_plugin.kernels.experts.routed_experts` on the
packed matrices. Layers the kernels do not cover stay on vLLM's own dense experts: an activation
other than SiLU-gated (SwiGLU), expert biases, ``OWL_SPARSE_DENSE=1``, a dtype or CPU without a
kernel, or an expert shape measured slower than ``F.linear`` on a CPU without AVX-512 (the linear
layers' rule, ``linear_method._pack``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch
from vllm.model_executor.layers.fused_moe.unquantized_fused_moe_method import UnquantizedFusedMoEMethod
from vllm.model_executor.utils import set_weight_attrs

from owl_plugin.formats.compact import CompactFormatError, decompress
from owl_plugin.integrations.vllm.linear_method import _FIX, PIECES, _pack, does_not_fit, incomplete_pieces
from owl_plugin.kernels.report import sparse_moe_requested

logger = logging.getLogger(__name__)
FUSED = ("w13", "w2")  # vLLM's expert parameters: gate+up stacked, and down


class OwlSparseFusedMoEMethod(UnquantizedFusedMoEMethod):
    """Unquantized fused-MoE method whose compressed expert matrices are decompressed while loading.

    Args:
        moe: the layer's ``FusedMoEConfig`` (``layer.moe_config``).
        prefix: the vLLM layer's name, e.g. ``model.layers.0.mlp.experts``.
        compressed: checkpoint module names under ``prefix`` stored compressed
            (``model.layers.0.mlp.experts.3.gate_proj``, ...).
        values_dtype: dtype of ``weight_values`` in the checkpoint (default: the model's dtype).
        on_loaded: called after the weights are loaded (the config's deferred Hub integrity check).
    """

    def __init__(self, moe: Any, prefix: str, compressed: list[str], values_dtype: torch.dtype | None, *,
                 on_loaded: Callable[[], None] | None = None) -> None:
        super().__init__(moe)
        self.experts_cls = sparse_experts_class(self.experts_cls, moe)
        self.prefix = prefix
        self.compressed = sorted(compressed)
        self.values_dtype = values_dtype
        self.on_loaded = on_loaded
        self._pending: dict[tuple[int, str], dict[str, torch.Tensor]] = {}  # (expert, shard) → pieces so far
        self._loaded: set[tuple[int, str]] = set()

    def create_weights(self, layer: torch.nn.Module, num_experts: int, hidden_size: int,
                       intermediate_size_per_partition: int, params_dtype: torch.dtype,
                       **extra_weight_attrs: Any) -> None:
        super().create_weights(layer, num_experts, hidden_size, intermediate_size_per_partition, params_dtype,
                               **extra_weight_attrs)
        dtypes = {"values": self.values_dtype or params_dtype, "bitmask": torch.uint8, "shape": torch.int64}
        for fused in FUSED:
            for piece, suffix in PIECES.items():
                placeholder = torch.nn.Parameter(torch.empty(0, dtype=dtypes[piece]), requires_grad=False)
                set_weight_attrs(placeholder, {"weight_loader": functools.partial(self._load_piece, layer, fused,
                                                                                  piece)})
                layer.register_parameter(f"{fused}_{suffix}", placeholder)

    def _name(self, expert_id: int, shard_id: str) -> str:
        """A readable name of one expert matrix for messages (vLLM's shard ids: w1 gate, w3 up, w2 down)."""
        return f"{self.prefix}.{expert_id} ({ {'w1': 'gate', 'w3': 'up', 'w2': 'down'}.get(shard_id, shard_id) })"

    def _load_piece(self, layer: torch.nn.Module, fused: str, piece: str, param: torch.nn.Parameter,
                    loaded_weight: torch.Tensor, weight_name: str, shard_id: str, expert_id: int,
                    return_success: bool = False) -> bool | None:
        """Weight loader of the placeholders: buffer one piece; load the expert matrix once it is complete."""
        key = (expert_id, shard_id)
        pieces = self._pending.setdefault(key, {})
        if piece in pieces:
            raise CompactFormatError(f"{self._name(*key)}: {PIECES[piece]} appears twice in the checkpoint; {_FIX}")
        pieces[piece] = loaded_weight.clone()  # vLLM hands a view of one expert of a stacked tensor
        if len(pieces) < len(PIECES):
            return True if return_success else None
        del self._pending[key]
        dense = decompress(pieces["values"], pieces["bitmask"], pieces["shape"], name=f"{self._name(*key)}.weight")
        target = getattr(layer, f"{fused}_weight")
        try:
            target.weight_loader(param=target, loaded_weight=dense, weight_name=f"{self.prefix}.{fused}_weight",
                                 shard_id=shard_id, expert_id=expert_id, return_success=True)
        except (AssertionError, ValueError, RuntimeError) as error:
            raise does_not_fit(self._name(*key), dense, self.prefix, error) from error
        self._loaded.add(key)
        return True if return_success else None

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        """Check every compressed expert matrix was loaded, drop the placeholders, prepare as unquantized."""
        if self.on_loaded is not None:
            self.on_loaded()
        if self._pending:
            raise incomplete_pieces("experts", {self._name(*key): pieces for key, pieces in self._pending.items()})
        if len(self._loaded) != len(self.compressed):
            raise CompactFormatError(
                f"{self.prefix}: config.json's quantization_config.compressed_modules lists {len(self.compressed)} "
                f"expert matrices ({self.compressed[0]}, ...), the checkpoint held {len(self._loaded)}; {_FIX}")
        for fused in FUSED:
            for suffix in PIECES.values():
                delattr(layer, f"{fused}_{suffix}")
        super().process_weights_after_loading(layer)  # lays the experts out, then SparseExperts packs them
        logger.debug("owl_sparse: %s loaded %d compressed expert matrices (%s)", self.prefix, len(self._loaded),
                     "packed" if getattr(layer, "owl_packed_experts", None) else "dense in memory")


class SparseExperts:
    """Mixed in before one of vLLM's CPU experts classes: packs the experts, then runs them sparse.

    Falls back to the class it extends (dense, vLLM's grouped GEMM) for a layer whose experts could
    not all be packed or hold fewer than ``MIN_ZERO_SHARE`` zeros (owl_plugin.kernels.experts; the rule
    transformers' loader applies too).
    """

    packed_experts: Any = None  # owl_plugin.kernels.experts.PackedExperts once packed

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        from vllm.model_executor.utils import replace_parameter

        w13, w2 = layer.w13_weight.data, layer.w2_weight.data
        name = getattr(layer, "layer_name", "experts")
        gate_up = [_pack(w13[e], f"{name}.{e}.w13") for e in range(w13.shape[0])]
        down = [_pack(w2[e], f"{name}.{e}.w2") for e in range(w2.shape[0])]
        if any(p is None for p in (*gate_up, *down)):
            super().process_weights_after_loading(layer)  # type: ignore[misc]
            return
        from owl_plugin.kernels.experts import MIN_ZERO_SHARE, PackedExperts

        packed = PackedExperts(gate_up, down)
        if packed.zero_share() < MIN_ZERO_SHARE:  # a profile may leave the experts dense: packed is larger
            logger.info("owl_sparse: %s keeps its experts dense (%.1f%% zeros < %.1f%%)", name,
                        100 * packed.zero_share(), 100 * MIN_ZERO_SHARE)
            del packed, gate_up, down
            super().process_weights_after_loading(layer)  # type: ignore[misc]
            return
        self.packed_experts = packed
        layer.owl_packed_experts = [*gate_up, *down]  # what the kernel report counts
        for param, dense in (("w13_weight", w13), ("w2_weight", w2)):  # same shape, one element of storage
            replace_parameter(layer, param, dense.new_zeros(1).expand(dense.shape))
        del w13, w2, dense  # the last references to the dense experts
        from owl_plugin.kernels.heap import return_freed_heap

        return_freed_heap()

    def apply(self, output: torch.Tensor, hidden_states: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
              topk_weights: torch.Tensor, topk_ids: torch.Tensor, activation: Any, global_num_experts: int,
              expert_map: torch.Tensor | None, *args: Any, **kwargs: Any) -> None:
        if self.packed_experts is None:
            return super().apply(output, hidden_states, w1, w2, topk_weights, topk_ids,  # type: ignore[misc]
                                 activation, global_num_experts, expert_map, *args, **kwargs)
        from owl_plugin.kernels.experts import routed_experts

        # like vLLM's CPU experts: ids arrive local (expert_map unused), and a router weight applied on the
        # input (top-1 only) is not applied again
        on_input = bool(kwargs.get("apply_router_weight_on_input", args[-1] if args else False))
        output.copy_(routed_experts(hidden_states.contiguous(), topk_weights, topk_ids, self.packed_experts,
                                    apply_weights=not on_input))
        return None


def sparse_experts_class(experts_cls: type | None, moe: Any) -> type | None:
    """``experts_cls`` with :class:`SparseExperts` mixed in, or unchanged when its layers cannot be packed."""
    try:
        from vllm.model_executor.layers.fused_moe.activation import MoEActivation
        from vllm.model_executor.layers.fused_moe.experts.cpu_moe import CPUUnquantizedExperts
    except ImportError:  # another vLLM layout: the experts stay dense
        return experts_cls
    if (not sparse_moe_requested(default=True) or experts_cls is None
            or not issubclass(experts_cls, CPUUnquantizedExperts) or moe.activation != MoEActivation.SILU
            or moe.has_bias):
        return experts_cls
    return type(f"OwlSparse{experts_cls.__name__}", (SparseExperts, experts_cls), {})
