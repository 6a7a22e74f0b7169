"""Perplexity over consecutive, non-overlapping windows (the Wanda / OWL / SparseGPT protocol).

    ppl = exp( Σ_w NLL_w / (W · (L − 1)) )

over the first W windows of L tokens of the evaluation text, built by
``owl_plugin.text.evaluation_windows`` (the same windows in every engine): raw L text tokens, or,
when the model was trained with BOS (``owl_plugin.text.window_protocol``), ``[BOS] + L − 1`` text
tokens. Targets are positions 1..L−1 of each window, so a BOS is never scored.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from tqdm.auto import tqdm

from owl_plugin.text import evaluation_windows


@torch.no_grad()
def perplexity(
    model: nn.Module,
    token_ids: torch.Tensor,
    *,
    seq_len: int = 512,
    max_windows: int | None = 40,
    progress: bool = True,
    bos_token_id: int | None = None,
) -> float:
    """Perplexity of ``model`` on ``token_ids`` (1-D) in windows of ``seq_len`` tokens.

    Args:
        model: a causal LM returning ``.logits``.
        token_ids: the tokenized evaluation text.
        seq_len: window length L.
        max_windows: evaluate at most this many windows from the start (None: all).
        bos_token_id: start every window with this token (``WindowProtocol.bos_token_id``); None: raw windows.
    """
    windows = evaluation_windows(token_ids, seq_len=seq_len, max_windows=max_windows, bos_token_id=bos_token_id)
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for window in tqdm(windows, desc="perplexity", unit="window", disable=not progress):
        batch = torch.tensor([window], dtype=torch.long, device=device)
        logits = model(input_ids=batch, use_cache=False).logits.float()
        nll = nn.functional.cross_entropy(logits[0, :-1], batch[0, 1:], reduction="sum")
        total_nll += float(nll)
        total_tokens += seq_len - 1
    return math.exp(total_nll / total_tokens)
