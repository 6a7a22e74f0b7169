"""Routed SwiGLU experts on the sparse kernels: a mixture-of-experts layer whose expert matrices stay packed.

For token t routed to experts e_1..e_k with router weights w_t1..w_tk (Mixtral of Experts, Jiang et
al. 2024, §2.1; Qwen3-MoE)::

    y_t = Σ_j w_tj · down_{e_j}( silu(gate_{e_j}(x_t)) ⊙ up_{e_j}(x_t) )

with ``gate`` and ``up`` stacked into one ``[2I, H]`` matrix per expert (vLLM's ``w13``: gate rows
first) and ``down`` ``[H, I]``. The tokens of each expert are gathered and run through
:func:`owl_plugin.kernels.sparse_linear` as one batch, so an expert with few tokens (decode) reads
its packed weights once on the batch-1..16 kernel, and a busy expert (prefill) takes the larger-batch
paths. The per-expert outputs are weighted and summed in float32, then cast to ``x``'s dtype.

The work runs inside one op with a fake implementation, because the grouping by expert depends on
the data: ``torch.compile`` (vLLM compiles its models) treats it as one opaque call instead of
breaking its graph. With the compiled extension that op is ``torch.ops.owl_ext.routed_experts``
(csrc/routed_experts.cpp: the whole loop over experts in C++, one ATen call per step; from Python the
steps around the two products cost about as much as the products at 1 token); without it, the
custom op ``torch.ops.owl.routed_experts`` runs the same steps in torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from owl_plugin.kernels import dispatch
from owl_plugin.kernels.pack import TENSOR_ORDER, PackedLinear


# Both loaders pack a layer's fused experts only with at least this share of zeros (a profile may leave the experts
# dense): below it the layout holds more bytes than dense bf16 (2(1 - s) + 1/8 > 2 per weight) and the kernels
# read them all.
MIN_ZERO_SHARE = 1 / 16


@dataclass(frozen=True)
class PackedExperts:
    """The packed matrices of one MoE layer's experts, and the flat form the op takes.

    Attributes:
        gate_up: per expert, the packed ``[2I, H]`` gate-then-up matrix.
        down: per expert, the packed ``[H, I]`` down matrix.
    """

    gate_up: Sequence[PackedLinear]
    down: Sequence[PackedLinear]
    tensors: list[torch.Tensor] = field(init=False, repr=False)
    shapes: list[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.gate_up or len(self.gate_up) != len(self.down):
            raise ValueError(f"{len(self.gate_up)} gate/up matrices but {len(self.down)} down matrices")
        matrices = [*self.gate_up, *self.down]
        if len({m.dtype for m in matrices}) != 1:
            raise ValueError(f"the experts mix dtypes {sorted({str(m.dtype) for m in matrices})}")
        object.__setattr__(self, "tensors", [t for m in matrices for t in m.ordered()])
        object.__setattr__(self, "shapes", [d for m in matrices for d in (m.out_features, m.in_features)])

    def __len__(self) -> int:
        return len(self.gate_up)

    def nbytes(self) -> int:
        """Bytes held by the packed tensors."""
        return sum(m.nbytes() for m in (*self.gate_up, *self.down))

    def zero_share(self) -> float:
        """Share of zeros among all the experts' weights (from the stored non-zero counts)."""
        matrices = (*self.gate_up, *self.down)
        return 1 - sum(m.nnz for m in matrices) / sum(m.out_features * m.in_features for m in matrices)


def routed_experts(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, experts: PackedExperts,
                   *, apply_weights: bool = True) -> torch.Tensor:
    """``y`` of a routed SwiGLU MoE layer whose experts are packed.

    Args:
        x: ``[tokens, H]`` hidden states, contiguous, in the experts' dtype.
        topk_weights: ``[tokens, k]`` router weights.
        topk_ids: ``[tokens, k]`` expert ids in ``0..E-1``; negative ids (experts held by another
            rank) are skipped.
        experts: the layer's packed experts.
        apply_weights: multiply each expert's output by its router weight (off when the caller
            already scaled ``x`` by it, vLLM's ``apply_router_weight_on_input``).

    Returns:
        ``[tokens, H]`` in ``x``'s dtype.

    Raises:
        ValueError: shapes or dtypes that disagree, or an expert id >= E, naming them.
    """
    _check(x, topk_weights, topk_ids, experts.tensors, experts.shapes)
    if dispatch.compiled_extension() is None:
        return routed_experts_op(x, topk_weights, topk_ids, experts.tensors, experts.shapes, apply_weights)
    # the C++ op straight away (its fake is registered with the extension): the Python custom op would pass the
    # layer's 6·E tensors through the dispatcher twice, ~0.3 ms per call with 128 experts
    return torch.ops.owl_ext.routed_experts(x, topk_weights, topk_ids, experts.tensors, experts.shapes, apply_weights,
                                            dispatch.SPARSE_MAX_BATCH, dispatch.SPARSE_MAX_BATCH_BF16,
                                            dispatch.SPARSE_MAX_BATCH_FP32, dispatch.PAIRS_MIN_BATCH,
                                            dispatch.TILE_BYTES)


def _check(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, tensors: list[torch.Tensor],
           shapes: list[int]) -> None:
    num_experts = len(shapes) // 4
    if len(tensors) != 6 * num_experts or len(shapes) != 4 * num_experts or not num_experts:
        raise ValueError(f"routed_experts: {len(tensors)} tensors and {len(shapes)} sizes do not describe 2 x E "
                         "packed matrices")
    if topk_ids.shape != topk_weights.shape or topk_ids.dim() != 2 or topk_ids.shape[0] != x.shape[0]:
        raise ValueError(f"topk_ids {tuple(topk_ids.shape)} and topk_weights {tuple(topk_weights.shape)} must both "
                         f"be [tokens={x.shape[0]}, k]")
    dtype = tensors[TENSOR_ORDER.index("values")].dtype  # of the first matrix
    if x.dim() != 2 or x.shape[1] != shapes[1] or x.dtype != dtype or not x.is_contiguous():
        raise ValueError(f"x must be contiguous [tokens, {shapes[1]}] {dtype}, got {tuple(x.shape)} {x.dtype}"
                         f"{'' if x.is_contiguous() else ' (not contiguous)'}")


def _matrix(tensors: list[torch.Tensor], shapes: list[int], index: int, dtype: torch.dtype) -> PackedLinear:
    parts = dict(zip(TENSOR_ORDER, tensors[3 * index:3 * index + 3], strict=True))
    return PackedLinear(tensors=parts, out_features=shapes[2 * index], in_features=shapes[2 * index + 1],
                        dtype=dtype)


@torch.library.custom_op("owl::routed_experts", mutates_args=())
def routed_experts_op(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                      tensors: list[torch.Tensor], shapes: list[int], apply_weights: bool) -> torch.Tensor:
    """Raw op ``torch.ops.owl.routed_experts``: ``tensors`` / ``shapes`` are :class:`PackedExperts`'
    flat form (3 tensors and ``out, in`` per matrix; the E gate/up matrices, then the E down ones).

    The steps in torch, for machines without the compiled extension; with it, :func:`routed_experts` calls
    ``torch.ops.owl_ext.routed_experts`` (csrc/routed_experts.cpp), the same loop in C++.
    """
    _check(x, topk_weights, topk_ids, tensors, shapes)
    return _routed_experts_torch(x, topk_weights, topk_ids, tensors, shapes, apply_weights)


def _routed_experts_torch(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                          tensors: list[torch.Tensor], shapes: list[int], apply_weights: bool) -> torch.Tensor:
    """The routed experts step by step in torch (no compiled extension): csrc/routed_experts.cpp's loop."""
    from owl_plugin.kernels import sparse_linear

    num_experts = len(shapes) // 4
    dtype = x.dtype
    hidden = shapes[2 * num_experts]  # out_features of the first down matrix
    out = torch.zeros(x.shape[0], hidden, dtype=torch.float32)
    k = topk_ids.shape[1]
    flat = topk_ids.reshape(-1).long()
    if flat.numel() and int(flat.max()) >= num_experts:
        raise ValueError(f"expert id {int(flat.max())} out of range for {num_experts} experts")
    routed = (flat >= 0).nonzero().squeeze(1)
    order = routed[torch.argsort(flat[routed], stable=True)]  # slots (token·k + j), grouped by expert
    counts = torch.bincount(flat[order], minlength=num_experts).tolist()
    weights = topk_weights.reshape(-1)
    start = 0
    for expert, count in enumerate(counts):
        if not count:
            continue
        slots = order[start:start + count]
        start += count
        tokens = slots // k
        gate_up = _matrix(tensors, shapes, expert, dtype)
        down = _matrix(tensors, shapes, num_experts + expert, dtype)
        gate, up = sparse_linear(x.index_select(0, tokens).contiguous(), gate_up).chunk(2, dim=-1)
        y = sparse_linear((F.silu(gate) * up).contiguous(), down).float()
        if apply_weights:
            y = y * weights.index_select(0, slots).float().unsqueeze(1)
        out.index_add_(0, tokens, y)
    return out.to(x.dtype)


@routed_experts_op.register_fake
def _(x, topk_weights, topk_ids, tensors, shapes, apply_weights):
    return x.new_empty((x.shape[0], shapes[len(shapes) // 2]))
