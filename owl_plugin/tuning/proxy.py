"""The cheap, faithful score of a candidate allocation: prune with Wanda, compare with the dense model.

For a profile (module → ratio s), every block linear is pruned as Wanda does (Sun et al.,
arXiv 2306.11695, Eq. 1): per output row, the ⌊s · in_features⌋ weights with the lowest
    A_ij = |W_ij| · sqrt(E[x_j²])
are zeroed (stable sort, as llmcompressor's ``WandaPruningModifier``). Two ways to get E[x²]:

- ``WandaProxy`` (``--proxy dense``): from the *dense* model's cached calibration statistics, so
  a candidate costs one mask and one forward pass over the held-out windows.
- ``SequentialWandaProxy`` (``--proxy sequential``): as llmcompressor's sequential pipeline
  prunes, block by block: block b's E[x²] is measured on the calibration windows as they leave
  the already pruned blocks 0..b−1, then b is pruned and runs again to feed b+1. The masks are
  the ones ``oneshot`` would make; a candidate costs two more passes over the calibration
  windows. Allocations that move sparsity between blocks change what later blocks see, which
  only this proxy measures.

The weights are restored after every candidate.

Score, per held-out token position t, with p the dense and q the pruned next-token distribution,
both coarsened to the dense model's top-k tokens plus one "rest" class (a lower bound of the
full KL that needs only k numbers per position on disk):

    KL_t = Σ_{i ∈ top-k} p_i · (log p_i − log q_i) + p_rest · (log p_rest − log q_rest)
    score = mean_t KL_t                  (lower is better; 0 for the dense model)

and, for reference, the pruned model's perplexity on the same held-out tokens.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import nn

from owl_plugin.profile import SparsityProfile

#: how the score is described in every output
PROXY_NAME = "KL(dense ‖ pruned) per token"


class ProxyScore(NamedTuple):
    kl: float
    ppl: float


def _log_rest(logp_top: torch.Tensor) -> torch.Tensor:
    """log(1 − Σ exp(logp_top)) over the last axis, clamped away from log 0."""
    top = torch.logsumexp(logp_top, dim=-1).clamp(max=-1e-7)
    return torch.log(-torch.expm1(top)).clamp(min=-80.0)


@torch.no_grad()
def dense_reference(model: nn.Module, windows: Sequence[torch.Tensor], *, topk: int = 128) -> dict[str, torch.Tensor]:
    """The dense model's top-k next-token log-probabilities on every held-out position.

    Returns ``indices`` (W, T, k) int64, ``logp`` (W, T, k) float32 and ``logp_rest`` (W, T).
    """
    indices, logps = [], []
    device = next(model.parameters()).device
    for window in windows:
        logp = torch.log_softmax(model(input_ids=window.to(device), use_cache=False).logits.float(), dim=-1)[0]
        top = logp.topk(min(topk, logp.shape[-1]), dim=-1)
        indices.append(top.indices.cpu())
        logps.append(top.values.cpu())
    logp = torch.stack(logps)
    return {"indices": torch.stack(indices), "logp": logp, "logp_rest": _log_rest(logp)}


def _check_reference(windows: Sequence[torch.Tensor], reference: Mapping[str, torch.Tensor]) -> None:
    if reference["indices"].shape[0] != len(windows):
        raise ValueError(f"the dense reference covers {reference['indices'].shape[0]} windows, "
                         f"but {len(windows)} were given")


def wanda_order(weight: torch.Tensor, input_sq_mean: torch.Tensor) -> torch.Tensor:
    """Per output row, the input indices by ascending Wanda score |W_ij| · sqrt(E[x_j²]) (stable)."""
    metric = weight.detach().abs().float() * input_sq_mean.float().sqrt().unsqueeze(0)
    order = torch.sort(metric, dim=-1, stable=True).indices
    # rank order fits in int16 for rows up to 32767 weights: a third of the memory of int64
    return order.to(torch.int16 if weight.shape[1] <= 32767 else torch.int32)


def pruned_weight(dense: torch.Tensor, order: torch.Tensor, ratio: float) -> torch.Tensor:
    """``dense`` with the first ⌊ratio · in_features⌋ weights of every row's ``order`` set to zero."""
    k = int(dense.shape[1] * ratio)
    pruned = dense.clone()
    if k > 0:
        pruned.scatter_(1, order[:, :k].long(), 0.0)
    return pruned


class WandaProxy:
    """Prunes ``model`` in place per candidate profile, scores it against the dense reference, restores it.

    Args:
        model: the dense model (its block linears are modified during ``score`` and restored after).
        linears: full name → ``nn.Linear`` of every linear a profile may prune.
        input_sq_means: full name → mean x_j² over calibration tokens (dense model).
        windows: held-out token windows, each (1, T).
        reference: ``dense_reference(model, windows)``.
    """

    def __init__(
        self,
        model: nn.Module,
        linears: Mapping[str, nn.Linear],
        input_sq_means: Mapping[str, torch.Tensor],
        windows: Sequence[torch.Tensor],
        reference: Mapping[str, torch.Tensor],
    ) -> None:
        self.model = model
        self.linears = dict(linears)
        self.windows = list(windows)
        self.reference = reference
        _check_reference(self.windows, reference)
        self.dense = {name: linear.weight.detach().clone() for name, linear in self.linears.items()}
        self.order = self._orders(self.dense, input_sq_means)

    @staticmethod
    def _orders(dense: Mapping[str, torch.Tensor], input_sq_means: Mapping[str, torch.Tensor]) -> dict:
        return {name: wanda_order(weight, input_sq_means[name]) for name, weight in dense.items()}

    def on_first(self, windows: int) -> WandaProxy:
        """The same proxy scored on the first ``windows`` held-out windows only (masks and weights shared)."""
        if not 1 <= windows <= len(self.windows):
            raise ValueError(f"windows={windows!r} must be in [1, {len(self.windows)}] (the held-out windows)")
        return self.on_windows(self.windows[:windows], {k: v[:windows] for k, v in self.reference.items()})

    @torch.no_grad()
    def _apply(self, ratios: Mapping[str, float]) -> None:
        for name, linear in self.linears.items():
            linear.weight.copy_(pruned_weight(self.dense[name], self.order[name], ratios.get(name, 0.0)))

    @torch.no_grad()
    def _restore(self) -> None:
        for name, linear in self.linears.items():
            linear.weight.copy_(self.dense[name])

    @contextmanager
    def pruned(self, profile: SparsityProfile) -> Iterator[WandaProxy]:
        """Inside the ``with`` statement the model is pruned with ``profile``'s ratios; dense again after it."""
        unknown = [n for n in profile.modules if n not in self.linears]
        if unknown:
            raise ValueError(f"the profile names {unknown[0]!r}, which is not a block linear of this model")
        try:
            self._apply(profile.sparsities)
            yield self
        finally:
            self._restore()

    def on_windows(self, windows: Sequence[torch.Tensor], reference: Mapping[str, torch.Tensor]) -> WandaProxy:
        """The same proxy scored on other windows (e.g. an evaluation text) against their dense reference."""
        _check_reference(windows, reference)
        other = copy.copy(self)
        other.windows, other.reference = list(windows), reference
        return other

    def score(self, profile: SparsityProfile) -> ProxyScore:
        """Prune with ``profile``'s ratios, return (mean KL per position, held-out perplexity), restore."""
        with self.pruned(profile):
            return self.score_as_is()

    @torch.no_grad()
    def score_as_is(self) -> ProxyScore:
        """(mean KL per position, perplexity) of the model as it is now on this proxy's windows."""
        device = next(self.model.parameters()).device
        total_kl, total_nll, positions, predicted = 0.0, 0.0, 0, 0
        for w, window in enumerate(self.windows):
            logq = torch.log_softmax(self.model(input_ids=window.to(device), use_cache=False).logits.float(),
                                     dim=-1)[0].cpu()
            idx, logp, logp_rest = (self.reference[k][w] for k in ("indices", "logp", "logp_rest"))
            logq_top = logq.gather(-1, idx)
            kl = (logp.exp() * (logp - logq_top)).sum(-1) + logp_rest.exp() * (logp_rest - _log_rest(logq_top))
            total_kl += float(kl.sum())
            positions += kl.numel()
            labels = window[0, 1:].cpu()
            total_nll += float(-logq[:-1].gather(-1, labels.unsqueeze(-1)).sum())
            predicted += labels.numel()
        return ProxyScore(kl=total_kl / positions, ppl=math.exp(total_nll / predicted))


class SequentialWandaProxy(WandaProxy):
    """``WandaProxy`` whose masks are made block by block on the partly pruned model (llmcompressor's way).

    A linear that sees no calibration token (an MoE expert no token is routed to) has no statistics and
    stays dense in every candidate.

    Args:
        model, linears, windows, reference: as ``WandaProxy``.
        batches: the calibration windows, each (batch, T): every candidate measures its own E[x²] on them.
    """

    def __init__(
        self,
        model: nn.Module,
        linears: Mapping[str, nn.Linear],
        batches: Sequence[torch.Tensor],
        windows: Sequence[torch.Tensor],
        reference: Mapping[str, torch.Tensor],
    ) -> None:
        if len(batches) == 0:
            raise ValueError("the sequential proxy needs calibration windows: batches is empty")
        self.batches = list(batches)
        super().__init__(model, linears, {}, windows, reference)

    @staticmethod
    def _orders(dense, input_sq_means):  # masks are made per candidate, in _apply
        return {}

    @torch.no_grad()
    def _apply(self, ratios: Mapping[str, float]) -> None:
        from owl_plugin.statistics import collect_input_sq_means

        def prune_block(block: str, means: Mapping[str, torch.Tensor]) -> None:
            for name, mean in means.items():
                if name in self.linears:
                    order = wanda_order(self.dense[name], mean)
                    self.linears[name].weight.copy_(pruned_weight(self.dense[name], order, ratios.get(name, 0.0)))

        self._restore()  # every block starts dense: its statistics see only the earlier blocks' pruning
        collect_input_sq_means(self.model, self.batches, progress=False, after_block=prune_block)
