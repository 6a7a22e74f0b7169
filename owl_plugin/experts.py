"""Mixture-of-experts blocks: every expert's matrices as ``nn.Linear`` units of allocation.

transformers 5 stores a Qwen3-MoE / Mixtral block's experts as fused 3-D parameters
(``mlp.experts.gate_up_proj`` of shape (E, 2I, H) and ``mlp.experts.down_proj`` of shape (E, H, I)).
Allocation and pruning work on 2-D linear weights, so each fused experts module is *linearized*:
replaced by :class:`LinearExperts`, a ``ModuleList`` whose expert ``e`` holds three ``nn.Linear``

    experts.<e>.gate_proj.weight = gate_up_proj[e, :I]      (I × H)
    experts.<e>.up_proj.weight   = gate_up_proj[e, I:]      (I × H)
    experts.<e>.down_proj.weight = down_proj[e]             (H × I)

(transposed for ``is_transposed`` layouts). The weights are *views* of the fused parameters: no
copy, and a change to an expert's linear is a change to the fused tensor. The names are those of
llmcompressor's linearized experts (``LinearExperts2D``), so a profile computed here names the
modules llmcompressor's pruners see, and, for Qwen3-MoE, the tensors transformers saves.

The forward pass is the eager one of transformers (only routed tokens reach an expert, outputs
weighted by the router and summed), so activation statistics of an expert's linears are over the
tokens routed to it. An expert no calibration token is routed to has no statistics: see
:func:`unrouted_rule` for how the allocation handles it (explicitly, named in the profile).

Layouts this cannot linearize (experts with biases, a custom gating such as gpt-oss's clamped
SwiGLU) stay refused by name (``owl_plugin.coverage.UnsupportedArchitecture``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

#: ``<...>.experts.<e>.<projection>``: a linear of one expert
EXPERT_LINEAR = re.compile(r"^(?P<expert>.+\.experts\.\d+)\.(?P<projection>[^.]+)$")

UNROUTED_RULE = (
    "an expert matrix that no calibration token was routed to has no activation statistics; its unit gets the "
    "mean score of the routed units of the same kind (same projection for granularity=linear, experts for "
    "granularity=expert) in its decoder block (the model's, if none in the block is routed), and a block unit "
    "scores over its routed matrices only"
)


def expert_of(name: str) -> str | None:
    """``"model.layers.0.mlp.experts.3"`` for ``"model.layers.0.mlp.experts.3.up_proj"``; None for other linears."""
    match = EXPERT_LINEAR.match(name)
    return match["expert"] if match else None


def projection_of(name: str) -> str | None:
    """``"up_proj"`` for ``"model.layers.0.mlp.experts.3.up_proj"``; None for other linears."""
    match = EXPERT_LINEAR.match(name)
    return match["projection"] if match else None


def _fused(module: nn.Module, name: str) -> torch.Tensor | None:
    value = getattr(module, name, None)
    return value if isinstance(value, torch.Tensor) and value.dim() == 3 else None


def is_fused_experts(module: nn.Module) -> bool:
    """True for a module holding experts as fused 3-D parameters (``down_proj`` and ``gate_up_proj``/``up_proj``)."""
    return _fused(module, "down_proj") is not None and (
        _fused(module, "gate_up_proj") is not None or _fused(module, "up_proj") is not None)


def why_not_linearizable(module: nn.Module) -> str | None:
    """None if :class:`LinearExperts` reproduces ``module``; otherwise the reason, in a few words."""
    if not is_fused_experts(module):
        return "not a fused experts module"
    if getattr(module, "has_bias", False) or any(_fused(module, f"{p}_bias") is not None or
                                                  isinstance(getattr(module, f"{p}_bias", None), torch.Tensor)
                                                  for p in ("gate_up_proj", "up_proj", "down_proj")):
        return "experts with biases"
    if getattr(module, "is_concatenated", True) is False:
        return "gate and up interleaved, not concatenated"
    apply_gate = getattr(type(module), "_apply_gate", None)
    if apply_gate is not None and getattr(apply_gate, "__name__", "") != "_default_apply_gate":
        return f"a custom gating ({type(module).__name__}._apply_gate)"
    if not isinstance(getattr(module, "act_fn", None), nn.Module) and not callable(getattr(module, "act_fn", None)):
        return "no act_fn"
    return None


class ExpertLinears(nn.Module):
    """One expert: ``down_proj(act(gate_proj(x)) * up_proj(x))`` (``gate_proj`` absent for ungated experts)."""

    def __init__(self, gate: torch.Tensor | None, up: torch.Tensor, down: torch.Tensor, act_fn) -> None:
        super().__init__()
        if gate is not None:
            self.gate_proj = _linear(gate)
        self.up_proj = _linear(up)
        self.down_proj = _linear(down)
        self._act = act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = self.up_proj(x)
        hidden = self._act(self.gate_proj(x)) * up if hasattr(self, "gate_proj") else self._act(up)
        return self.down_proj(hidden)


def _linear(weight: torch.Tensor) -> nn.Linear:
    """An ``nn.Linear`` (no bias) whose weight is ``weight`` itself (a view: storage shared, nothing copied)."""
    linear = nn.Linear(1, 1, bias=False, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=False)
    linear.in_features, linear.out_features = weight.shape[1], weight.shape[0]
    return linear


class LinearExperts(nn.ModuleList):
    """A fused experts module as a list of per-expert linears (views of the fused weights), same forward.

    ``routed_tokens[e]`` counts the tokens routed to expert ``e`` since construction.
    """

    def __init__(self, fused: nn.Module) -> None:
        reason = why_not_linearizable(fused)
        if reason is not None:
            raise ValueError(f"cannot linearize {type(fused).__name__}: {reason}")
        down = fused.down_proj
        gate_up = _fused(fused, "gate_up_proj")
        transposed = bool(getattr(fused, "is_transposed", False))
        experts = []
        for e in range(down.shape[0]):
            d = down.data[e].T if transposed else down.data[e]
            if gate_up is not None:
                gu = gate_up.data[e].T if transposed else gate_up.data[e]
                half = gu.shape[0] // 2
                experts.append(ExpertLinears(gu[:half], gu[half:], d, fused.act_fn))
            else:
                u = fused.up_proj.data[e].T if transposed else fused.up_proj.data[e]
                experts.append(ExpertLinears(None, u, d, fused.act_fn))
        super().__init__(experts)
        self.num_experts = len(experts)
        self.routed_tokens = torch.zeros(self.num_experts, dtype=torch.int64)
        self.fused = [fused]  # kept out of the module tree (a list), restored by ``linearized``

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        final = torch.zeros_like(hidden_states)
        with torch.no_grad():
            mask = nn.functional.one_hot(top_k_index, num_classes=self.num_experts).permute(2, 1, 0)
            self.routed_tokens += mask.sum(dim=(1, 2)).cpu()
            hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
        for index in hit:
            e = int(index[0])
            top_k_pos, token_idx = torch.where(mask[e])
            out = self[e](hidden_states[token_idx]) * top_k_weights[token_idx, top_k_pos, None]
            final.index_add_(0, token_idx, out.to(final.dtype))
        return final


def fused_experts(model: nn.Module) -> dict[str, nn.Module]:
    """Full name → fused experts module, for every one in ``model``."""
    return {name: module for name, module in model.named_modules() if is_fused_experts(module)}


@contextmanager
def linearized(model: nn.Module) -> Iterator[dict[str, LinearExperts]]:
    """Within the block, every linearizable fused experts module of ``model`` is a :class:`LinearExperts`.

    The expert linears share storage with the fused parameters, so nothing is copied and anything
    done to them in place is done to the model. On exit the original modules are put back.
    Yields full name → ``LinearExperts``.
    """
    swapped: dict[str, LinearExperts] = {}
    try:
        for name, module in fused_experts(model).items():
            if why_not_linearizable(module) is None:
                swapped[name] = LinearExperts(module)
                model.set_submodule(name, swapped[name])
        yield swapped
    finally:
        for name, experts in swapped.items():
            model.set_submodule(name, experts.fused[0])


#: model_type → (in-memory → checkpoint name substitutions) for families whose checkpoints name experts
#: differently from the linearized modules; transformers writes Mixtral's experts as ``block_sparse_moe.experts.<e>.w1``
#: (gate), ``w3`` (up), ``w2`` (down). Qwen3-MoE checkpoints use the linearized names themselves.
CHECKPOINT_EXPERT_NAMES: dict[str, tuple[tuple[str, str], dict[str, str]]] = {
    "mixtral": ((".mlp.experts.", ".block_sparse_moe.experts."),
                {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}),
}


def checkpoint_name(module: str, model_type: str | None) -> str:
    """The name under which transformers saves the expert linear ``module`` (unchanged for other modules)."""
    rule = CHECKPOINT_EXPERT_NAMES.get(model_type or "")
    projection = projection_of(module)
    if rule is None or projection is None:
        return module
    (old, new), projections = rule
    if old not in module or projection not in projections:
        return module
    return module.replace(old, new)[: -len(projection)] + projections[projection]
