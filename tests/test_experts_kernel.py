"""``owl_plugin.kernels.experts``: routed SwiGLU experts on packed matrices equal the dense computation.

The reference is written out token by token (``y_t = Σ_j w_tj · down_e(silu(gate_e x_t) ⊙ up_e x_t)``)
on the dense matrices the experts were packed from, in float64.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from owl_plugin.kernels import pack_dense
from owl_plugin.kernels.experts import PackedExperts, routed_experts

HIDDEN, INTER, EXPERTS = 72, 40, 5  # widths not a multiple of the kernels' 64-column blocks


def _experts(dtype: torch.dtype, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)

    def pruned(*shape: int) -> torch.Tensor:
        weight = torch.randn(*shape, generator=generator)
        return (weight * (torch.rand(*shape, generator=generator) >= 0.7)).to(dtype)

    return [pruned(2 * INTER, HIDDEN) for _ in range(EXPERTS)], [pruned(HIDDEN, INTER) for _ in range(EXPERTS)]


def _reference(x, weights, ids, gate_up, down, *, apply_weights=True) -> torch.Tensor:
    out = torch.zeros(x.shape[0], HIDDEN, dtype=torch.float64)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            if e < 0:
                continue
            gate, up = (gate_up[e].double() @ x[t].double()).chunk(2)
            y = down[e].double() @ (F.silu(gate) * up)
            out[t] += (float(weights[t, j]) if apply_weights else 1.0) * y
    return out


def _routing(tokens: int, k: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(EXPERTS - 1, generator=generator)[:k] for _ in range(tokens)])  # expert 4 idle
    ids[0, -1] = -1  # an expert held by another rank
    return torch.rand(tokens, k, generator=generator), ids.to(torch.int32)


# "": the C++ loop (csrc/routed_experts.cpp) on the best path; "torch": the pure-torch twin of that loop
LOOPS = ["", "torch"]


@pytest.mark.parametrize("tokens", [1, 3, 17])
@pytest.mark.parametrize("apply_weights", [True, False])
@pytest.mark.parametrize("isa", LOOPS)
def test_routed_experts_equal_the_dense_sum_fp32(tokens, apply_weights, isa, monkeypatch) -> None:
    monkeypatch.setenv("OWL_SPARSE_ISA", isa)
    gate_up, down = _experts(torch.float32)
    experts = PackedExperts([pack_dense(w) for w in gate_up], [pack_dense(w) for w in down])
    x = torch.randn(tokens, HIDDEN)
    weights, ids = _routing(tokens, 2)
    ours = routed_experts(x, weights, ids, experts, apply_weights=apply_weights)
    expected = _reference(x, weights, ids, gate_up, down, apply_weights=apply_weights)
    assert ours.dtype == torch.float32 and ours.shape == (tokens, HIDDEN)
    assert torch.allclose(ours.double(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("isa", LOOPS)
def test_routed_experts_bf16_within_rounding(isa, monkeypatch) -> None:
    monkeypatch.setenv("OWL_SPARSE_ISA", isa)
    gate_up, down = _experts(torch.bfloat16)
    experts = PackedExperts([pack_dense(w) for w in gate_up], [pack_dense(w) for w in down])
    x = torch.randn(6, HIDDEN).to(torch.bfloat16)
    weights, ids = _routing(6, 3)
    ours = routed_experts(x, weights, ids, experts)
    expected = _reference(x, weights, ids, gate_up, down)
    assert ours.dtype == torch.bfloat16
    assert ((ours.double() - expected).norm() / expected.norm()).item() < 2e-2  # bf16 h and output roundings


def test_routed_experts_trace_as_one_op_under_torch_compile() -> None:
    """The grouping by expert depends on the data; the custom op keeps torch.compile's graph whole."""
    gate_up, down = _experts(torch.float32)
    experts = PackedExperts([pack_dense(w) for w in gate_up], [pack_dense(w) for w in down])
    x = torch.randn(4, HIDDEN)
    weights, ids = _routing(4, 2)
    compiled = torch.compile(lambda x, w, i: routed_experts(x, w, i, experts) * 2, fullgraph=True, backend="eager")
    assert torch.equal(compiled(x, weights, ids), routed_experts(x, weights, ids, experts) * 2)


@pytest.mark.parametrize("isa", LOOPS)
def test_bad_routing_and_expert_lists_are_named(isa, monkeypatch) -> None:
    monkeypatch.setenv("OWL_SPARSE_ISA", isa)
    gate_up, down = _experts(torch.float32)
    experts = PackedExperts([pack_dense(w) for w in gate_up], [pack_dense(w) for w in down])
    x = torch.randn(2, HIDDEN)
    weights, ids = _routing(2, 2)
    with pytest.raises(ValueError, match=f"expert id {EXPERTS} out of range for {EXPERTS} experts"):
        routed_experts(x, weights, torch.full_like(ids, EXPERTS), experts)
    with pytest.raises(ValueError, match=r"topk_ids \(2, 2\) and topk_weights \(2, 1\)"):
        routed_experts(x, weights[:, :1], ids, experts)
    wrong_dtype = rf"x must be contiguous \[tokens, {HIDDEN}\] torch.float32, got \(2, {HIDDEN}\) torch.bfloat16"
    with pytest.raises(ValueError, match=wrong_dtype):
        routed_experts(x.to(torch.bfloat16), weights, ids, experts)
    with pytest.raises(ValueError, match=r"\(not contiguous\)"):
        routed_experts(torch.randn(HIDDEN, 2).t(), weights, ids, experts)
    with pytest.raises(ValueError, match="5 gate/up matrices but 4 down matrices"):
        PackedExperts([pack_dense(w) for w in gate_up], [pack_dense(w) for w in down[:4]])
    with pytest.raises(ValueError, match="mix dtypes"):
        PackedExperts([pack_dense(w) for w in gate_up], [pack_dense(w.to(torch.bfloat16)) for w in down])


def test_owl_sparse_moe_switch_defaults_per_engine_and_names_a_bad_value(monkeypatch) -> None:
    from owl_plugin.kernels.report import sparse_moe_requested

    monkeypatch.delenv("OWL_SPARSE_MOE", raising=False)
    monkeypatch.delenv("OWL_SPARSE_DENSE", raising=False)
    assert sparse_moe_requested(default=True) and not sparse_moe_requested(default=False)
    monkeypatch.setenv("OWL_SPARSE_MOE", "1")
    assert sparse_moe_requested(default=False)
    monkeypatch.setenv("OWL_SPARSE_MOE", "0")
    assert not sparse_moe_requested(default=True)
    monkeypatch.setenv("OWL_SPARSE_MOE", "1")
    monkeypatch.setenv("OWL_SPARSE_DENSE", "1")  # everything dense wins
    assert not sparse_moe_requested(default=True)
    monkeypatch.setenv("OWL_SPARSE_MOE", "maybe")
    with pytest.raises(ValueError, match="OWL_SPARSE_MOE='maybe'"):
        sparse_moe_requested(default=True)


def test_zero_share_counts_the_experts_zeros_against_the_packing_rule() -> None:
    """Both loaders pack a layer's experts only from MIN_ZERO_SHARE zeros (a profile may leave them dense)."""
    from owl_plugin.kernels.experts import MIN_ZERO_SHARE

    gate_up, down = _experts(torch.float32)
    pruned = PackedExperts([pack_dense(w) for w in gate_up], [pack_dense(w) for w in down])
    zeros = sum(int((w == 0).sum()) for w in (*gate_up, *down)) / sum(w.numel() for w in (*gate_up, *down))
    assert pruned.zero_share() == pytest.approx(zeros, abs=1e-12) and 0.6 < zeros < 0.8
    unpruned = [[pack_dense(torch.randn_like(w)) for w in matrices] for matrices in (gate_up, down)]
    dense = PackedExperts(*unpruned)
    assert dense.zero_share() < MIN_ZERO_SHARE < pruned.zero_share()
