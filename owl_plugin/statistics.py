"""Layer-at-a-time activation statistics for OWL (and any Wanda-score based allocator).

The inputs of decoder block 0 are captured once; then each block runs on the previous
block's outputs (the dense model, as in OWL's reference), with hooks that accumulate
Σ_t x_tj² for every linear's input feature j. With ``after_block``, a caller may change each
block once its statistics are in (prune it), and the block runs again so the next one sees the
changed outputs: llmcompressor's sequential pipeline, which ``owl tune``'s sequential proxy
mirrors. Peak memory is one block plus the cached hidden states: the model's full set of
activations never exists at once, and with ``device=`` only the block being measured is moved
to that device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from owl_plugin.layers import find_decoder_blocks, find_linears

logger = logging.getLogger(__name__)


class _BlockInputsCaptured(Exception):
    """Raised by the hook on block 0 to stop the forward pass once its inputs are seen."""


class _SquareMeter:
    """Accumulates Σ x² per input feature and the token count for one linear (positions before
    ``skip_first`` of every window left out)."""

    def __init__(self, name: str, in_features: int, skip_first: int = 0) -> None:
        self.name = name
        self.sum_sq = torch.zeros(in_features, dtype=torch.float64)
        self.tokens = 0
        self.skip_first = skip_first

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        # one batch is summed in float32 (at most a few thousand tokens), the running total in float64;
        # NaN/inf are caught once per block at its output (a NaN input reaches it), not per linear
        x = args[0].detach()
        if self.skip_first:
            if x.dim() < 3:
                raise ValueError(f"skip_first={self.skip_first}: the inputs of {self.name!r} are routed tokens "
                                 f"{tuple(x.shape)}, not (batch, position, feature); positions cannot be left out")
            x = x[:, self.skip_first:]
        x = x.reshape(-1, x.shape[-1]).float()
        self.sum_sq += (x * x).sum(dim=0).cpu().double()
        self.tokens += x.shape[0]

    def mean(self) -> torch.Tensor:
        return (self.sum_sq / max(self.tokens, 1)).float()


def _check_finite(meters: dict[str, _SquareMeter]) -> None:
    """Raise naming the first linear (in block order) whose inputs held NaN or inf."""
    for name, meter in meters.items():
        if not torch.isfinite(meter.sum_sq).all():
            raise ValueError(f"activations entering {name!r} contain NaN or inf")


def _to(value, device):
    """Move tensors (also inside tuples, lists and dicts) to ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def capture_block_inputs(
    model: nn.Module, first_block: nn.Module, batches: Iterable[torch.Tensor]
) -> list[tuple[torch.Tensor, dict]]:
    """The hidden states and keyword arguments (attention mask, position embeddings, ...) that enter
    ``first_block`` for each batch, one (hidden, kwargs) pair per batch.

    The forward pass stops at the block (a hook raises), so only the embeddings run. Layer-at-a-time
    loops (these statistics, a sequential pruner) feed each block these inputs and the previous
    block's outputs.
    """
    cached: list[tuple[torch.Tensor, dict]] = []

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        cached.append((hidden.detach(), dict(kwargs)))
        raise _BlockInputsCaptured

    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        for batch in batches:
            try:
                model(input_ids=batch.to(device), use_cache=False)
            except _BlockInputsCaptured:
                pass
    finally:
        handle.remove()
    return cached


def _run_block(block: nn.Module, name: str, cached: list[tuple[torch.Tensor, dict]], device,
               meters: dict[str, _SquareMeter]) -> list[torch.Tensor]:
    """``block``'s output for every cached (hidden, kwargs), on the hidden states' device; NaN/inf raise."""
    outputs = []
    for hidden, kwargs in cached:
        if device is None:
            out = block(hidden, **kwargs)
        else:
            out = block(hidden.to(device), **_to(kwargs, device))
        out = out[0] if isinstance(out, (tuple, list)) else out
        if not torch.isfinite(out).all():
            _check_finite(meters)  # name the first linear whose input went bad, if one did
            raise ValueError(f"decoder block {name!r} produced NaN or inf activations")
        outputs.append(out.to(hidden.device))
    return outputs


@torch.no_grad()
def collect_input_sq_means(
    model: nn.Module,
    batches: Sequence[torch.Tensor],
    *,
    device: torch.device | str | None = None,
    progress: bool = True,
    after_block: Callable[[str, dict[str, torch.Tensor]], None] | None = None,
    skip_first: int = 0,
) -> dict[str, torch.Tensor]:
    """Mean over calibration tokens of x_j² at the input of every linear in every decoder block.

    Args:
        model: a causal LM (``model(input_ids=...)``) with decoder blocks in an ``nn.ModuleList``.
        batches: token-id tensors of shape (batch, seq_len).
        device: where to run each block (moved there and back one at a time); default: where it is.
        progress: show a tqdm bar over blocks.
        after_block: called as ``after_block(block_name, means)`` with that block's statistics (full
            linear name → mean x²) before its outputs are passed on; the block then runs once more on
            the same inputs, so a block changed by the call (pruned) feeds the next one its new outputs.
        skip_first: leave the first ``skip_first`` positions of every window out of the means (they still
            run: later positions attend to them), e.g. 1 to see the statistics without the BOS / attention
            sink. Not for MoE experts (their inputs are routed tokens without positions: ValueError).

    Returns:
        Full linear name → float32 tensor of shape (in_features,). A linear that saw no token (an MoE
        expert the router never picked) has no entry.
    """
    if len(batches) == 0:
        raise ValueError("calibration data is empty: need at least one batch of token ids")
    shortest = min(batch.shape[-1] for batch in batches)
    if isinstance(skip_first, bool) or not (isinstance(skip_first, int) and 0 <= skip_first < shortest):
        raise ValueError(f"skip_first={skip_first!r} must be an int in [0, {shortest}) (the shortest window's length)")
    prefix, blocks = find_decoder_blocks(model)
    cached = capture_block_inputs(model, blocks[0], batches)
    if len(cached) != len(batches):
        raise RuntimeError(f"captured inputs for {len(cached)} of {len(batches)} batches at {prefix}.0")
    means: dict[str, torch.Tensor] = {}
    for index in tqdm(range(len(blocks)), desc="activation statistics", unit="block", disable=not progress):
        block, name = blocks[index], f"{prefix}.{index}"
        home = next(block.parameters()).device
        if device is not None:
            block.to(device)
        meters = {n: _SquareMeter(n, m.in_features, skip_first) for n, m in find_linears(block, name).items()}
        handles = [m.register_forward_hook(meters[n]) for n, m in find_linears(block, name).items()]
        try:
            try:
                outputs = _run_block(block, name, cached, device, meters)
            finally:
                for handle in handles:
                    handle.remove()
            _check_finite(meters)
            block_means = {n: meter.mean() for n, meter in meters.items() if meter.tokens}
            # an MoE expert no token was routed to has no entry (owl_plugin.experts.UNROUTED_RULE)
            means.update(block_means)
            if after_block is not None:
                after_block(name, block_means)
                outputs = _run_block(block, name, cached, device, {})
        finally:
            if device is not None:
                block.to(home)
        cached[:] = [(out, kwargs) for out, (_, kwargs) in zip(outputs, cached, strict=True)]
        logger.debug("collected statistics for %s (%d linears)", name, len(meters))
    return means
