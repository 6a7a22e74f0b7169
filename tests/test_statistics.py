"""Layer-at-a-time activation statistics equal a brute-force whole-model pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from owl_plugin.layers import find_decoder_blocks, prunable_linears
from owl_plugin.statistics import _SquareMeter, collect_input_sq_means


def brute_force_input_sq_means(model: nn.Module, batches, skip_first: int = 0) -> dict[str, torch.Tensor]:
    """Run the whole model on every batch with a forward hook on every block linear:
    mean over all tokens (from position ``skip_first`` of each window) of x_j^2, accumulated in float64."""
    linears = {name: lin for group in prunable_linears(model).values() for name, lin in group.items()}
    sums = {name: torch.zeros(lin.in_features, dtype=torch.float64) for name, lin in linears.items()}
    tokens = dict.fromkeys(linears, 0)

    def hook_for(name):
        def hook(module, args, output):
            x = args[0][:, skip_first:].reshape(-1, args[0].shape[-1]).double()
            sums[name] += x.square().sum(dim=0)
            tokens[name] += x.shape[0]
        return hook

    handles = [lin.register_forward_hook(hook_for(name)) for name, lin in linears.items()]
    try:
        with torch.no_grad():
            for batch in batches:
                model(input_ids=batch, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return {name: sums[name] / tokens[name] for name in linears}


def _assert_equal_stats(actual, expected):
    assert list(actual) == list(expected)
    for name in expected:
        assert actual[name].shape == expected[name].shape, name
        torch.testing.assert_close(actual[name].double(), expected[name], rtol=1e-5, atol=0, msg=name)


def test_collector_equals_whole_model_pass(tiny_model, tiny_batches, expected_tiny_linears):
    expected = brute_force_input_sq_means(tiny_model, tiny_batches)
    actual = collect_input_sq_means(tiny_model, tiny_batches, progress=False)
    assert list(actual) == expected_tiny_linears
    assert all(v.dtype == torch.float32 for v in actual.values())
    _assert_equal_stats(actual, expected)
    # the statistics differ from block to block (the collector really propagates block outputs)
    assert not torch.allclose(actual["model.layers.0.self_attn.q_proj"], actual["model.layers.3.self_attn.q_proj"])


@pytest.mark.parametrize("skip_first", [1, 5])
def test_collector_leaves_out_the_first_positions(tiny_model, tiny_batches, skip_first):
    """skip_first=k: the means over positions k.. of every window (the first ones still run: later ones attend
    to them), as a whole-model pass sees them; different from the means over all positions."""
    expected = brute_force_input_sq_means(tiny_model, tiny_batches, skip_first)
    actual = collect_input_sq_means(tiny_model, tiny_batches, progress=False, skip_first=skip_first)
    _assert_equal_stats(actual, expected)
    every = collect_input_sq_means(tiny_model, tiny_batches, progress=False)
    assert not torch.allclose(actual["model.layers.1.mlp.down_proj"], every["model.layers.1.mlp.down_proj"])


@pytest.mark.parametrize("bad", [-1, 2.0, True, "1", 10_000])
def test_collector_names_a_bad_skip_first(tiny_model, tiny_batches, bad):
    with pytest.raises(ValueError, match=f"skip_first={bad!r} must be an int in \\[0, "):
        collect_input_sq_means(tiny_model, tiny_batches, progress=False, skip_first=bad)


def test_skip_first_refuses_routed_tokens_by_name():
    """An MoE expert's inputs are routed tokens (tokens, features) without positions to leave out."""
    meter = _SquareMeter("model.layers.0.mlp.experts.3.down_proj", 4, skip_first=1)
    with pytest.raises(ValueError, match=r"'model.layers.0.mlp.experts.3.down_proj' are routed tokens \(5, 4\)"):
        meter(nn.Identity(), (torch.ones(5, 4),), None)
    dense = _SquareMeter("dense", 4, skip_first=1)
    dense(nn.Identity(), (torch.ones(2, 3, 4),), None)  # (batch, position, feature): positions 1 and 2 counted
    assert dense.tokens == 4 and torch.equal(dense.sum_sq, torch.full((4,), 4.0, dtype=torch.float64))


def test_collector_with_batches_of_different_lengths(tiny_model):
    generator = torch.Generator().manual_seed(7)
    batches = [
        torch.randint(0, 512, (1, 16), generator=generator),
        torch.randint(0, 512, (1, 41), generator=generator),
        torch.randint(0, 512, (2, 24), generator=generator),  # batch of two
    ]
    expected = brute_force_input_sq_means(tiny_model, batches)
    _assert_equal_stats(collect_input_sq_means(tiny_model, batches, progress=False), expected)


def test_collector_with_device_argument(tiny_model, tiny_batches):
    expected = brute_force_input_sq_means(tiny_model, tiny_batches)
    _assert_equal_stats(collect_input_sq_means(tiny_model, tiny_batches, device="cpu", progress=False), expected)


def test_collector_never_runs_the_lm_head_and_leaves_no_hooks(tiny_model, tiny_batches):
    calls = []
    handle = tiny_model.lm_head.register_forward_hook(lambda *args: calls.append(1))
    collect_input_sq_means(tiny_model, tiny_batches, progress=False)
    handle.remove()
    assert calls == []  # stopped at block 0's input; the full model never ran
    for module in tiny_model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    # the model still works normally afterwards
    with torch.no_grad():
        assert tiny_model(input_ids=tiny_batches[0]).logits.shape == (1, 32, 512)


def test_after_block_changes_what_the_next_blocks_see(tiny_model, tiny_batches):
    """A block changed by ``after_block`` feeds the next ones its new outputs, as if changed beforehand."""
    import copy

    dense = collect_input_sq_means(copy.deepcopy(tiny_model), tiny_batches, progress=False)
    edited = copy.deepcopy(tiny_model)
    with torch.no_grad():
        edited.model.layers[1].mlp.down_proj.weight.zero_()
    expected = collect_input_sq_means(edited, tiny_batches, progress=False)
    seen = []

    def zero_down_proj_of_block_1(block, means):
        seen.append((block, sorted(means)))
        if block == "model.layers.1":
            with torch.no_grad():
                tiny_model.model.layers[1].mlp.down_proj.weight.zero_()

    got = collect_input_sq_means(tiny_model, tiny_batches, progress=False, after_block=zero_down_proj_of_block_1)
    assert [block for block, _ in seen] == [f"model.layers.{b}" for b in range(len(seen))]
    assert seen[1][1] == sorted(n for n in dense if n.startswith("model.layers.1."))
    for name in dense:
        block = int(name.split(".")[2])
        # up to block 1 the statistics are measured before the change; from block 2 on, after it
        torch.testing.assert_close(got[name], dense[name] if block <= 1 else expected[name], rtol=1e-6, atol=0)
    assert not torch.allclose(dense["model.layers.2.self_attn.q_proj"], expected["model.layers.2.self_attn.q_proj"])


def test_collector_rejects_empty_calibration(tiny_model):
    with pytest.raises(ValueError, match="calibration data is empty"):
        collect_input_sq_means(tiny_model, [], progress=False)


def test_collector_rejects_nan_activations(tiny_model, tiny_batches):
    with torch.no_grad():
        tiny_model.model.layers[2].input_layernorm.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"model\.layers\.2\.self_attn\.q_proj.*NaN"):
        collect_input_sq_means(tiny_model, tiny_batches, progress=False)


def test_find_decoder_blocks_on_tiny_llama(tiny_model):
    prefix, blocks = find_decoder_blocks(tiny_model)
    assert prefix == "model.layers" and blocks is tiny_model.model.layers


def test_find_decoder_blocks_rejects_a_model_without_blocks():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="no decoder blocks found in Sequential"):
        find_decoder_blocks(model)


def test_find_decoder_blocks_prefers_the_list_of_num_hidden_layers():
    class Config:
        num_hidden_layers = 3

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = Config()
            self.adapters = nn.ModuleList(nn.Linear(2, 2) for _ in range(5))  # longer, but not the blocks
            self.layers = nn.ModuleList(nn.Sequential(nn.Linear(2, 2)) for _ in range(3))

    prefix, blocks = find_decoder_blocks(Model())
    assert prefix == "layers" and len(blocks) == 3


def test_prunable_linears_excludes_embeddings_and_head(tiny_model, expected_tiny_linears):
    groups = prunable_linears(tiny_model)
    assert list(groups) == [f"model.layers.{i}" for i in range(4)]
    names = [name for group in groups.values() for name in group]
    assert names == expected_tiny_linears
    assert all(group[name] is tiny_model.get_submodule(name) for group in groups.values() for name in group)
