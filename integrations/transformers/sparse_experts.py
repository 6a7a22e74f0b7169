"""``OwlSparseExperts``: transformers' fused MoE experts held packed for the sparse kernels.

transformers 5 keeps the experts of a Qwen3-MoE / Mixtral block in one module with 3-D parameters,
``gate_up_proj`` ``[E, 2I, H]`` (gate rows first) and ``down_proj`` ``[E, H, I]``, called as
``experts(hidden_states, top_k_index, top_k_weights)``. After loading a compact checkpoint the quantizer
swaps each such module with a SiLU activation, no biases and pruned weights for an
:class:`OwlSparseExperts` (unless ``OWL_SPARSE_MOE=0`` or ``OWL_SPARSE_DENSE=1``): every expert matrix is packed with
``owl_plugin.kernels.pack_dense`` and the dense parameters are dropped; ``forward`` runs
:func:`owl_plugin.kernels.experts.routed_experts`. Packed experts ran 1.30-3.03x faster than
transformers' own ``grouped_mm`` experts at 1-64 tokens (examples/results/moe_experts*.md, bf16, 70%)
and hold 0.36-0.37x of their bytes. Saving writes the dense 3-D parameters again (unpacked exactly),
so ``save_pretrained`` gives an ordinary dense checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _silu_classes() -> tuple[type, ...]:
    """torch's SiLU and transformers' own (``ACT2FN["silu"]``)."""
    from transformers.activations import SiLUActivation

    return nn.SiLU, SiLUActivation


def packable_experts(module: nn.Module) -> bool:
    """True for a fused-experts module this class can replace: 3-D ``gate_up_proj`` / ``down_proj``
    parameters, gate rows then up rows (not interleaved, not transposed), SiLU-gated, no expert biases
    (the flags transformers' ``use_experts_implementation`` sets, where present)."""
    gate_up, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    layout = (getattr(module, "is_concatenated", True), getattr(module, "is_transposed", False),
              getattr(module, "has_gate", True), getattr(module, "has_bias", False))
    return (layout == (True, False, True, False)
            and isinstance(gate_up, nn.Parameter) and isinstance(down, nn.Parameter) and gate_up.dim() == 3
            and down.dim() == 3 and gate_up.shape[0] == down.shape[0] and gate_up.shape[1] == 2 * down.shape[2]
            and isinstance(getattr(module, "act_fn", None), _silu_classes())
            and getattr(module, "gate_up_proj_bias", None) is None and getattr(module, "down_proj_bias", None) is None)


class OwlSparseExperts(nn.Module):
    """Fused SwiGLU experts whose matrices are held only in the kernel's packed layout.

    Args:
        packed: ``owl_plugin.kernels.experts.PackedExperts`` of the experts.
    """

    def __init__(self, packed: Any) -> None:
        super().__init__()
        self.packed = packed
        self.num_experts = len(packed)
        for index, tensor in enumerate(packed.tensors):
            self.register_buffer(f"packed_{index}", tensor, persistent=False)  # moves/counts with the module

    @classmethod
    def from_experts(cls, module: nn.Module) -> OwlSparseExperts:
        """Pack every expert matrix of a fused-experts module (see :func:`packable_experts`)."""
        from owl_plugin.kernels import pack_dense
        from owl_plugin.kernels.experts import PackedExperts

        gate_up, down = module.gate_up_proj.detach(), module.down_proj.detach()
        return cls(PackedExperts([pack_dense(gate_up[e]) for e in range(gate_up.shape[0])],
                                 [pack_dense(down[e]) for e in range(down.shape[0])]))

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 - nn.Module's signature
        """``model.to(dtype)`` converts the buffers; the packed experts the kernel reads are rebuilt from them."""
        from owl_plugin.kernels.experts import PackedExperts
        from owl_plugin.kernels.pack import TENSOR_ORDER

        module = super()._apply(fn, recurse)
        tensors = iter(getattr(self, f"packed_{i}") for i in range(len(self.packed.tensors)))
        gate_up = [m.with_tensors({name: next(tensors) for name in TENSOR_ORDER}) for m in self.packed.gate_up]
        down = [m.with_tensors({name: next(tensors) for name in TENSOR_ORDER}) for m in self.packed.down]
        self.packed = PackedExperts(gate_up, down)
        return module

    @property
    def owl_packed_experts(self) -> list:
        """Every packed expert matrix (what ``owl_plugin.kernels.sparse_layer_report`` counts)."""
        return [*self.packed.gate_up, *self.packed.down]

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        from owl_plugin.kernels.experts import routed_experts

        return routed_experts(hidden_states.contiguous(), top_k_weights, top_k_index, self.packed)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        from owl_plugin.kernels import decompress_rows

        destination[prefix + "gate_up_proj"] = torch.stack([decompress_rows(m) for m in self.packed.gate_up])
        destination[prefix + "down_proj"] = torch.stack([decompress_rows(m) for m in self.packed.down])

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"{prefix or 'OwlSparseExperts'}: loading a state dict into packed sparse experts is not "
                           "supported; load the checkpoint with from_pretrained (or set OWL_SPARSE_MOE=0)")

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, packed={self.packed.nbytes()} bytes"


def swap_in_sparse_experts(model: nn.Module) -> list[str]:
    """Replace every packable fused-experts module of ``model`` that was pruned (at least
    ``owl_plugin.kernels.experts.MIN_ZERO_SHARE`` zeros, counted on the packing as vLLM's loader does: a profile
    may leave the experts dense) by an :class:`OwlSparseExperts`; returns their names."""
    from owl_plugin.kernels.experts import MIN_ZERO_SHARE

    names = []
    for name, module in list(model.named_modules()):
        if not name or not packable_experts(module):
            continue
        sparse = OwlSparseExperts.from_experts(module)
        if sparse.packed.zero_share() >= MIN_ZERO_SHARE:
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, sparse)
            names.append(name)
    return names
