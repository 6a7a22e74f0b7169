"""From a model to a SparsityProfile: gather each method's statistic, apply its formula.

    uniform: nothing to measure
    owl:     Wanda scores from layer-at-a-time activation statistics → outlier ratio per unit
    alpha:   eigenvalue spectrum of every linear (no data) → Hill α per unit (block mean by default)
    dlp:     Wanda scores from the same statistics as OWL → median score per unit
    atp:     nothing to measure: the ratio grows linearly with the unit's block index

A *unit* is a decoder block (default, as in both papers), a single linear (``granularity="linear"``)
or, for MoE models, an expert (``granularity="expert"``: each expert's gate/up/down matrices form a
unit, the block's other linears another). Ratios are computed per unit and given to every linear in
it. Fused 3-D MoE experts are split into per-expert linears first (``owl_plugin.experts``); experts
that calibration routes no token to follow ``owl_plugin.experts.UNROUTED_RULE`` and are listed in
``params["unrouted_experts"]``.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from owl_plugin.allocators import (
    alpha_ratios, atp_ratios, dlp_ratios, median_score, outlier_ratio, owl_ratios, uniform_ratios, wanda_scores,
)
from owl_plugin.bounds import Bounded
from owl_plugin.config import (
    AllocationConfig, AlphaConfig, ATPConfig, DLPConfig, OWLConfig, UniformConfig, config_params,
)
from owl_plugin.coverage import coverage
from owl_plugin.experts import UNROUTED_RULE, expert_of, linearized, projection_of
from owl_plugin.layers import prunable_linears
from owl_plugin.profile import ModuleSparsity, SparsityProfile
from owl_plugin.spectra import hill_alpha
from owl_plugin.statistics import collect_input_sq_means

logger = logging.getLogger(__name__)


def check_target(target: float) -> float:
    """Validate a target sparsity S ∈ [0, 1)."""
    if isinstance(target, bool) or not isinstance(target, numbers.Real) or not (0.0 <= float(target) < 1.0):
        raise ValueError(f"target sparsity {target!r} is invalid: must be a number in [0, 1), e.g. 0.7")
    return float(target)


def _units(blocks: Mapping[str, Mapping[str, nn.Linear]], granularity: str) -> dict[str, list[str]]:
    if granularity == "block":
        return {block: list(linears) for block, linears in blocks.items()}
    if granularity == "expert":  # the block's non-expert linears, then one unit per MoE expert
        units: dict[str, list[str]] = {}
        for block, linears in blocks.items():
            for name in linears:
                units.setdefault(expert_of(name) or block, []).append(name)
        return units
    return {name: [name] for linears in blocks.values() for name in linears}


def _unit_kind(unit: str, members: Sequence[str]) -> str | None:
    """What an unrouted unit is compared with: its projection (one expert linear), ``expert``, or None."""
    if len(members) == 1 and members[0] == unit and projection_of(unit):
        return projection_of(unit)
    if expert_of(members[0]) == unit:
        return "expert"
    return None


def _impute_unrouted(units: Mapping[str, list[str]], block_of: Mapping[str, str], scores: dict[str, float],
                     unrouted_units: Sequence[str]) -> None:
    """``owl_plugin.experts.UNROUTED_RULE``: an unrouted unit's score is the mean over routed units of its kind."""
    routed = dict(scores)
    for unit in unrouted_units:
        kind, block = _unit_kind(unit, units[unit]), block_of[units[unit][0]]
        peers = [u for u in routed if _unit_kind(u, units[u]) == kind]
        pool = [routed[u] for u in peers if block_of[units[u][0]] == block] or [routed[u] for u in peers]
        if kind is None or not pool:
            raise ValueError(f"{unit!r} saw no calibration token and no routed unit of its kind exists to take "
                             "its score from; use more calibration samples")
        scores[unit] = float(np.mean(pool))
    ordered = {u: scores[u] for u in units}  # unit order, as the formulas expect
    scores.clear()
    scores.update(ordered)


def _check_weights(blocks: Mapping[str, Mapping[str, nn.Linear]]) -> None:
    for linears in blocks.values():
        for name, linear in linears.items():
            if not torch.isfinite(linear.weight).all():
                raise ValueError(f"weight of {name!r} contains NaN or inf; cannot allocate sparsity")


def allocate(
    model: nn.Module,
    target: float,
    config: AllocationConfig | None = None,
    *,
    calibration: Sequence[torch.Tensor] | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    provenance: Mapping[str, Any] | None = None,
) -> SparsityProfile:
    """Compute a per-linear sparsity profile for ``model``.

    Args:
        model: a causal LM whose decoder blocks sit in an ``nn.ModuleList``.
        target: S ∈ [0, 1), the parameter-weighted mean sparsity over all block linears.
        config: ``UniformConfig``, ``OWLConfig`` (default), ``AlphaConfig``, ``DLPConfig`` or ``ATPConfig``.
        calibration: token-id batches (batch, seq_len); required by OWL and DLP only.
        device: run OWL's statistics block by block on this device.
        progress: show progress bars.
        provenance: extra facts recorded in ``profile.params`` (e.g. the calibration source).

    Returns:
        A ``SparsityProfile`` over every linear inside the decoder blocks; ``params["coverage"]`` records
        the share of the decoder's prunable parameters it covers (``owl_plugin.coverage``).

    Example:
        >>> profile = allocate(model, 0.7, OWLConfig(m=5, lam=0.08), calibration=batches)
        >>> profile.save("out/")
    """
    config = config or OWLConfig()
    check_target(target)
    with linearized(model):  # fused MoE experts → per-expert linears (views; owl_plugin.experts), restored after
        blocks = prunable_linears(model)  # refuses, by name, blocks holding prunable weights that are not nn.Linear
        covered = coverage(model, [name for linears in blocks.values() for name in linears])
        provenance = {"coverage": covered.to_dict(), **(provenance or {})}
        _check_weights(blocks)  # before any forward pass, so a bad weight is named, not its block's output
        input_sq_means = None
        if needs_statistics(config):
            if not calibration:
                raise ValueError(
                    f"{config.method.upper()} needs calibration data (token batches) to measure activations; got none"
                )
            input_sq_means = collect_input_sq_means(model, calibration, device=device, progress=progress)
        return allocate_linears(
            blocks, target, config,
            input_sq_means=input_sq_means, progress=progress, provenance=provenance,
        )


def needs_statistics(config: AllocationConfig) -> bool:
    """True for the methods that read activation statistics (Wanda scores): OWL and DLP."""
    return isinstance(config, (OWLConfig, DLPConfig))


def allocate_linears(
    blocks: Mapping[str, Mapping[str, nn.Linear]],
    target: float,
    config: AllocationConfig,
    *,
    input_sq_means: Mapping[str, torch.Tensor] | None = None,
    alphas: Mapping[str, float] | None = None,
    progress: bool = True,
    provenance: Mapping[str, Any] | None = None,
) -> SparsityProfile:
    """The allocation itself, given the linears grouped by decoder block and (for OWL, DLP) statistics.

    Integrations that gather activation statistics their own way (e.g. inside
    llmcompressor's calibration pipeline) call this directly.

    Args:
        blocks: decoder block name → {full linear name → nn.Linear}, in model order.
        target: S ∈ [0, 1).
        config: the method and its hyperparameters.
        input_sq_means: for OWL and DLP, full linear name → mean of x_j² over calibration tokens.
        alphas: for AlphaPruning, precomputed α per linear (computed here when None).
    """
    target = check_target(target)
    _check_weights(blocks)
    linears = {name: linear for group in blocks.values() for name, linear in group.items()}
    block_of = {name: block for block, group in blocks.items() for name in group}
    units = _units(blocks, getattr(config, "granularity", "block"))
    scores = unit_scores(blocks, config, input_sq_means=input_sq_means, alphas=alphas, progress=progress)
    bounded = unit_ratios(blocks, config, target, scores)
    unrouted = unrouted_linears(blocks, config, input_sq_means)
    if unrouted:
        provenance = {**(provenance or {}), "unrouted_experts": {"modules": unrouted, "rule": UNROUTED_RULE}}
        logger.warning("%d expert matrices saw no calibration token (e.g. %s): %s", len(unrouted), unrouted[0],
                       UNROUTED_RULE)
    return _to_profile(config, target, units, bounded, linears, block_of, scores, provenance)


def unrouted_linears(blocks: Mapping[str, Mapping[str, nn.Linear]], config: AllocationConfig,
                     input_sq_means: Mapping[str, torch.Tensor] | None) -> list[str]:
    """Expert linears without activation statistics (no calibration token routed to them), for OWL and DLP."""
    if not needs_statistics(config) or input_sq_means is None:
        return []
    return [n for group in blocks.values() for n in group if n not in input_sq_means and expert_of(n)]


def unit_scores(
    blocks: Mapping[str, Mapping[str, nn.Linear]],
    config: AllocationConfig,
    *,
    input_sq_means: Mapping[str, torch.Tensor] | None = None,
    alphas: Mapping[str, float] | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """The statistic each unit is ranked by: outlier ratio (OWL), mean α (alpha), median score (DLP).

    Empty for uniform and ATP, which read nothing from the model. Depends only on the
    config's statistic settings (OWL's M, AlphaPruning's xmin, the granularity), not on the
    target or band, so a hyperparameter search can compute it once per setting.
    """
    linears = {name: linear for group in blocks.values() for name, linear in group.items()}
    units = _units(blocks, getattr(config, "granularity", "block"))
    scores: dict[str, float] = {}
    if isinstance(config, (UniformConfig, ATPConfig)):
        return scores
    if isinstance(config, (OWLConfig, DLPConfig)):
        missing = [n for n in linears if (input_sq_means is None or n not in input_sq_means) and not
                   (input_sq_means is not None and expert_of(n))]  # an expert may be unrouted: UNROUTED_RULE
        if missing:
            raise ValueError(
                f"{config.method.upper()} needs activation statistics for every linear; missing for {missing[:3]} ..."
            )
        unrouted_units = []
        for unit, members in units.items():
            routed = [n for n in members if n in input_sq_means]
            if not routed:
                unrouted_units.append(unit)
                continue
            wanda = (wanda_scores(linears[n].weight, input_sq_means[n]) for n in routed)
            scores[unit] = outlier_ratio(wanda, config.m) if isinstance(config, OWLConfig) else median_score(wanda)
        if unrouted_units:
            block_of = {name: block for block, group in blocks.items() for name in group}
            _impute_unrouted(units, block_of, scores, unrouted_units)
        return scores
    if isinstance(config, AlphaConfig):
        if alphas is None:
            alphas = {
                name: hill_alpha(linear.weight, xmin=config.xmin)
                for name, linear in tqdm(linears.items(), desc="eigenvalue spectra", unit="linear",
                                         disable=not progress)
            }
        for unit, members in units.items():
            scores[unit] = float(np.mean([alphas[n] for n in members]))
        return scores
    raise TypeError(
        f"config must be UniformConfig, OWLConfig, AlphaConfig, DLPConfig or ATPConfig, got {type(config).__name__}"
    )


def unit_ratios(
    blocks: Mapping[str, Mapping[str, nn.Linear]],
    config: AllocationConfig,
    target: float,
    scores: Mapping[str, float],
) -> Bounded:
    """Apply the method's formula to per-unit ``scores`` (from ``unit_scores``), in unit order."""
    units = _units(blocks, getattr(config, "granularity", "block"))
    linears = {name: linear for group in blocks.values() for name, linear in group.items()}
    unit_params = np.array([sum(linears[n].weight.numel() for n in members) for members in units.values()])
    values = np.array([scores[u] for u in units]) if scores else None
    if isinstance(config, UniformConfig):
        return uniform_ratios(unit_params, target, bounds=config.bounds)
    if isinstance(config, OWLConfig):
        return owl_ratios(values, unit_params, target, lam=config.lam, bounds=config.bounds)
    if isinstance(config, AlphaConfig):
        return alpha_ratios(values, unit_params, target, epsilon=config.epsilon, bounds=config.bounds)
    if isinstance(config, DLPConfig):
        return dlp_ratios(values, unit_params, target, band=config.band, bounds=config.bounds)
    if isinstance(config, ATPConfig):
        depth_of = {block: i for i, block in enumerate(blocks)}
        block_of = {name: block for block, group in blocks.items() for name in group}
        depths = np.array([depth_of[block_of[members[0]]] for members in units.values()])
        return atp_ratios(depths, unit_params, target, beta=config.beta, bounds=config.bounds)
    raise TypeError(
        f"config must be UniformConfig, OWLConfig, AlphaConfig, DLPConfig or ATPConfig, got {type(config).__name__}"
    )


def _to_profile(config, target, units, bounded: Bounded, linears, block_of, scores, provenance) -> SparsityProfile:
    ratio_of = {name: float(r) for members, r in zip(units.values(), bounded.ratios, strict=True) for name in members}
    modules = {
        name: ModuleSparsity(ratio_of[name], int(linear.weight.numel()), block_of[name])
        for name, linear in linears.items()
    }
    params = config_params(config)
    params.update(provenance or {})
    profile = SparsityProfile(
        method=config.method, target=target, modules=modules, params=params, scores=scores,
        bounds=config.bounds, projected=bounded.projected,
    )
    logger.info("%s", profile.summary())
    return profile
