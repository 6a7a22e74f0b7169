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

The experts stay dense in memory: the sparse kernels cover ``nn.Linear``-style layers only (the
attention projections of an MoE model are packed as usual); vLLM's fused-MoE kernel gathers
the routed tokens per expert, which a sparse expert kernel would have to reproduce.
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
from owl_plugin.integrations.vllm.linear_method import _FIX, PIECES, does_not_fit, incomplete_pieces

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
        super().process_weights_after_loading(layer)
        logger.debug("owl_sparse: %s loaded %d compressed expert matrices (dense in memory)", self.prefix,
                     len(self._loaded))
