"""Perplexity over consecutive, non-overlapping windows (the Wanda / OWL / SparseGPT protocol).

    ppl = exp( Σ_w NLL_w / (W · (L − 1)) )

over the first W windows of L tokens of the evaluation text.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from tqdm.auto import tqdm


@torch.no_grad()
def perplexity(
    model: nn.Module,
    token_ids: torch.Tensor,
    *,
    seq_len: int = 512,
    max_windows: int | None = 40,
    progress: bool = True,
) -> float:
    """Perplexity of ``model`` on ``token_ids`` (1-D) in windows of ``seq_len`` tokens.

    Args:
        model: a causal LM returning ``.logits``.
        token_ids: the tokenized evaluation text.
        seq_len: window length L.
        max_windows: evaluate at most this many windows from the start (None: all).
    """
    windows = token_ids.numel() // seq_len
    if max_windows is not None:
        windows = min(windows, max_windows)
    if windows < 1:
        raise ValueError(f"evaluation text has {token_ids.numel()} tokens, fewer than one window of {seq_len}")
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for w in tqdm(range(windows), desc="perplexity", unit="window", disable=not progress):
        batch = token_ids[w * seq_len : (w + 1) * seq_len].unsqueeze(0).to(device)
        logits = model(input_ids=batch, use_cache=False).logits.float()
        nll = nn.functional.cross_entropy(logits[0, :-1], batch[0, 1:], reduction="sum")
        total_nll += float(nll)
        total_tokens += seq_len - 1
    return math.exp(total_nll / total_tokens)
