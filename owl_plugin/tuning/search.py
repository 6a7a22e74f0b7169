"""``owl tune``: search each method's hyperparameters on held-out calibration data, never the evaluation text.

1. Split the calibration token stream: the last ``heldout_fraction`` is held out; statistics
   windows are sampled from the rest, held-out windows are consecutive windows of the tail.
2. Measure once, cache on disk (``owl_plugin.tuning.cache``): activation statistics of the dense
   model, Hill α per linear (if AlphaPruning is searched), the dense top-k log-probabilities.
3. For the uniform reference and each candidate (``owl_plugin.tuning.space``): allocate from the
   cached statistics, prune with Wanda masks, score by KL against the dense model on the held-out
   windows (``owl_plugin.tuning.proxy``), append to the resumable log (``owl_plugin.tuning.log``).
4. Optionally (``refine``), let every block move: an evolutionary search starting from the
   best candidate, scored by the same proxy (``owl_plugin.tuning.refine``).
5. The best candidate is the one with the lowest KL.

``budget`` is the number of candidates *per method* (the uniform reference is extra).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from owl_plugin.allocate import allocate_linears, check_target
from owl_plugin.config import AlphaConfig, UniformConfig, config_params
from owl_plugin.layers import prunable_linears
from owl_plugin.profile import SparsityProfile
from owl_plugin.spectra import XMIN_RULES, esd, fit_power_law
from owl_plugin.staging import kill_point
from owl_plugin.statistics import collect_input_sq_means
from owl_plugin.text import WindowProtocol
from owl_plugin.tuning.cache import (
    StatisticsCache,
    cache_key,
    code_fingerprint,
    finite_numbers,
    model_fingerprint,
    numerics_fingerprint,
    tokens_fingerprint,
)
from owl_plugin.tuning.log import CandidateLog, candidate_id
from owl_plugin.tuning.proxy import PROXY_NAME, SequentialWandaProxy, WandaProxy, dense_reference
from owl_plugin.tuning.refine import RefineSettings, block_view, evolve, shifted
from owl_plugin.tuning.space import METHODS, candidates

logger = logging.getLogger(__name__)


#: ``TuneSettings.proxy`` choices → how their masks are described in the outputs
MASKS = {"dense": "dense statistics", "sequential": "block-by-block statistics of the partly pruned model"}
PROXIES = tuple(MASKS)


@dataclass(frozen=True, kw_only=True)
class TuneSettings:
    """Calibration split and proxy sizes (all recorded in the cache key and the outputs)."""

    num_samples: int = 32
    seq_len: int = 512
    heldout_windows: int = 8
    heldout_seq_len: int = 512
    heldout_fraction: float = 0.1
    seed: int = 0
    topk: int = 128
    granularity: str = "block"
    bounds: tuple[float, float] = (0.0, 0.99)
    #: how candidate masks are made: ``dense`` (from the dense model's statistics) or ``sequential``
    #: (block by block on the partly pruned model, as llmcompressor prunes); see ``owl_plugin.tuning.proxy``
    proxy: str = "dense"

    def __post_init__(self) -> None:
        if self.proxy not in PROXIES:
            raise ValueError(f"proxy={self.proxy!r} is not one of {', '.join(PROXIES)}")
        for name in ("num_samples", "heldout_windows", "topk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 1")
        for name in ("seq_len", "heldout_seq_len"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 2")
        if not (0.0 < self.heldout_fraction < 1.0):
            raise ValueError(f"heldout_fraction={self.heldout_fraction!r} must be in (0, 1), e.g. 0.1")
        object.__setattr__(self, "bounds", tuple(float(b) for b in self.bounds))


@dataclass
class TuneResult:
    """All candidates (records), the best one and its profile, and what came from the cache."""

    target: float
    records: list[dict[str, Any]]
    best: dict[str, Any]
    profile: SparsityProfile
    cache_folder: Path
    cached: dict[str, bool] = field(default_factory=dict)
    proxy: str = ""

    @property
    def statistics_cached(self) -> bool:
        """True when the activation statistics were read from the cache instead of collected."""
        return self.cached.get("input_sq_means", False)


def split_calibration(
    token_ids: torch.Tensor, settings: TuneSettings, *, bos_token_id: int | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(statistics windows from the head, held-out windows from the tail) of one token stream.

    The tail is the last ``heldout_fraction`` of the tokens, or more if the held-out windows
    need it; the two parts never overlap. Both are built by ``owl_plugin.text`` (with
    ``bos_token_id``, every window is that token + L − 1 text tokens).
    """
    from owl_plugin.text import calibration_batches, evaluation_windows, heldout_split

    head, held = heldout_split(token_ids, fraction=settings.heldout_fraction, windows=settings.heldout_windows,
                               window_len=settings.heldout_seq_len, head_min=settings.seq_len)
    heldout = [torch.tensor([w], dtype=token_ids.dtype) for w in evaluation_windows(
        held, seq_len=settings.heldout_seq_len, max_windows=settings.heldout_windows, bos_token_id=bos_token_id)]
    batches = calibration_batches(head, num_samples=settings.num_samples, seq_len=settings.seq_len,
                                  seed=settings.seed, bos_token_id=bos_token_id)
    return batches, heldout


def _alphas(linears: Mapping[str, nn.Linear], rules: Sequence[str], cache: StatisticsCache, progress: bool,
            cached: dict[str, bool]) -> dict[str, dict[str, float]]:
    """Hill α per linear for each xmin rule; one spectrum per linear serves every rule."""
    result = {rule: cache.get_json(f"alphas-{rule}.json", lambda value: finite_numbers(value, list(linears)))
              for rule in rules}
    todo = [rule for rule in rules if result[rule] is None]
    cached["alphas"] = not todo
    if todo:
        fresh: dict[str, dict[str, float]] = {rule: {} for rule in todo}
        for name, linear in tqdm(linears.items(), desc="eigenvalue spectra", unit="linear", disable=not progress):
            eigs = esd(linear.weight)
            for rule in todo:
                fresh[rule][name] = fit_power_law(eigs, xmin=rule).alpha
        for rule in todo:
            cache.put_json(f"alphas-{rule}.json", fresh[rule])
            result[rule] = fresh[rule]
        kill_point("alphas-cached")
    return result


def tune(
    model: nn.Module,
    token_ids: torch.Tensor,
    *,
    target: float,
    methods: Sequence[str] = METHODS,
    budget: int = 6,
    settings: TuneSettings | None = None,
    cache_root: str | Path | None = None,
    progress: bool = True,
    provenance: Mapping[str, Any] | None = None,
    refine: RefineSettings | None = None,
    windows: WindowProtocol | None = None,
) -> TuneResult:
    """Search the hyperparameters of ``methods`` for ``model`` at target sparsity ``target``.

    Args:
        model: the dense causal LM (restored to dense after every candidate).
        token_ids: the tokenized *calibration* text (1-D); held-out windows come from its tail.
        target: S ∈ [0, 1).
        methods: any of ``owl``, ``alpha``, ``dlp``, ``atp``.
        budget: candidates per method (the uniform reference is evaluated in addition).
        settings: split and proxy sizes (``TuneSettings``).
        cache_root: cache root (default ``$OWL_PLUGIN_CACHE`` or ``~/.cache/owl_plugin``).
        provenance: extra facts recorded in the best profile's params (e.g. the calibration source).
        refine: when given with ``generations > 0``, refine the best candidate block by block
            (``owl_plugin.tuning.refine``); the result is one more candidate, ``refined``.
        windows: how every window starts (``owl_plugin.text.window_protocol``); None: raw windows.
            Recorded in the cache (a resume across a protocol change is refused) and the profile.

    Returns:
        ``TuneResult`` with every candidate's record, the best one and its profile.
    """
    from owl_plugin.models import cache_dir

    target = check_target(target)
    settings = settings or TuneSettings()
    methods = list(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"methods={methods!r}: choose from {METHODS} (or 'all' on the command line)")
    blocks = prunable_linears(model)
    linears = {name: linear for group in blocks.values() for name, linear in group.items()}
    configs = [UniformConfig(bounds=settings.bounds)]
    for method in methods:
        configs += candidates(method, budget, target=target, num_blocks=len(blocks), bounds=settings.bounds,
                              granularity=settings.granularity)

    protocol = (windows or WindowProtocol(choice="off", bos_token_id=None, tokenizer_adds_bos=False)).as_dict()
    batches, heldout = split_calibration(token_ids, settings, bos_token_id=protocol["bos_token_id"])
    kill_point("calibration-ready")
    # statistics and the dense reference do not depend on how masks are made: both proxies share them
    key_settings = {k: v for k, v in asdict(settings).items() if k not in ("granularity", "bounds", "proxy")}
    if protocol["bos"]:  # raw windows keep the keys (and caches) they had before the protocol was recorded
        key_settings["windows"] = protocol
    key = cache_key(model_fingerprint(model), tokens_fingerprint(batches), tokens_fingerprint(heldout), key_settings,
                    code_hash=code_fingerprint(), numerics=numerics_fingerprint(next(model.parameters()).device))
    cache = StatisticsCache(cache_root or cache_dir(), key)
    check_protocol(cache, protocol)
    cached: dict[str, bool] = {}

    stats = cache.get_tensors("input_sq_means.safetensors", lambda tensors: _stats_problem(tensors, linears))
    cached["input_sq_means"] = stats is not None
    if stats is None:
        logger.info("collecting activation statistics (%d windows of %d tokens); cached in %s",
                    len(batches), settings.seq_len, cache.folder)
        stats = collect_input_sq_means(model, batches, progress=progress)
        cache.put_tensors("input_sq_means.safetensors", stats)
        kill_point("statistics-cached")
    else:
        logger.info("activation statistics loaded from the cache %s", cache.folder)
    reference = cache.get_tensors(f"dense_top{settings.topk}.safetensors",
                                  lambda tensors: _reference_problem(tensors, len(heldout)))
    cached["dense_reference"] = reference is not None
    if reference is None:
        reference = dense_reference(model, heldout, topk=settings.topk)
        cache.put_tensors(f"dense_top{settings.topk}.safetensors", reference)
        kill_point("reference-cached")
    rules = sorted({c.xmin for c in configs if isinstance(c, AlphaConfig)}, key=XMIN_RULES.index)
    alphas = _alphas(linears, rules, cache, progress, cached) if rules else {}

    if settings.proxy == "sequential":
        proxy = SequentialWandaProxy(model, linears, batches, heldout, reference)
    else:
        proxy = WandaProxy(model, linears, stats, heldout, reference)
    suffix = "" if settings.proxy == "dense" else f"-{settings.proxy}"  # dense logs keep their old names
    log = CandidateLog(cache.path(f"candidates-{target:.6g}{suffix}.jsonl"))
    records = []
    bar = tqdm(configs, desc=f"candidates @ {target:g}", unit="candidate", disable=not progress)
    for config in bar:
        params = config_params(config)
        cid = candidate_id(config.method, {**params, "target": target})
        record = log.get(cid)
        if record is None:
            start = time.perf_counter()
            profile = _profile(blocks, target, config, stats, alphas)
            score = proxy.score(profile)
            record = {"id": cid, "method": config.method, "params": params, "target": target,
                      "kl": score.kl, "ppl": score.ppl, "seconds": time.perf_counter() - start,
                      "projected": profile.projected, "blocks": list(profile.block_sparsities().values())}
            log.add(record)
            kill_point("candidate-logged")
        records.append(record)
        bar.set_postfix(best=f"{min(r['kl'] for r in records):.4f}")
    best = min(records, key=lambda r: r["kl"])
    best_config = next(c for c in configs if candidate_id(c.method, {**config_params(c), "target": target}) ==
                       best["id"])
    start = _profile(blocks, target, best_config, stats, alphas)
    if refine is not None and refine.generations:
        refined_record, refined = _refine(start, best, proxy, refine, cache, progress, suffix)
        records.append(refined_record)
        best = min(records, key=lambda r: r["kl"])
    tuned = {"proxy": PROXY_NAME, "kl": best["kl"], "heldout_ppl": best["ppl"], "budget": budget,
             "methods": methods, "candidates": len(records), "settings": asdict(settings), "windows": protocol}
    if best["method"] == "refined":
        profile = shifted(start, *refined, method="refined", params={
            "from": {"method": start.method, **dict(start.params)}, "refine": asdict(refine),
            **(provenance or {}), "tuned": tuned})
    else:
        profile = _profile(blocks, target, best_config, stats, alphas, provenance={**(provenance or {}),
                                                                                   "tuned": tuned})
    kill_point("best-chosen")
    return TuneResult(target=target, records=records, best=best, profile=profile, cache_folder=cache.folder,
                      cached=cached, proxy=f"{describe_proxy(settings)}; {describe_windows(protocol)}")


WINDOWS_FILE = "windows.json"


def _stats_problem(tensors: Mapping[str, torch.Tensor], linears: Mapping[str, nn.Linear]) -> str | None:
    """Why cached input statistics do not fit ``linears`` (None when they do); MoE experts may lack an entry."""
    for name, tensor in tensors.items():
        if name not in linears:
            return f"holds {name!r}, which is no block linear of this model"
        if tuple(tensor.shape) != (linears[name].in_features,) or (tensor < 0).any():
            return f"holds {name!r} with shape {tuple(tensor.shape)} or negative values"
    missing = [n for n in linears if n not in tensors and ".experts." not in n]
    return f"misses {missing[0]!r} ({len(missing)} linears)" if missing else None


def _reference_problem(tensors: Mapping[str, torch.Tensor], windows: int) -> str | None:
    """Why a cached dense reference is unusable for ``windows`` held-out windows (None when it is usable)."""
    if set(tensors) != {"indices", "logp", "logp_rest"}:
        return f"holds {sorted(tensors)}, not indices, logp and logp_rest"
    if tensors["indices"].shape != tensors["logp"].shape or len(tensors["indices"]) != windows:
        shapes = f"{tuple(tensors['indices'].shape)} and {tuple(tensors['logp'].shape)}"
        return f"holds shapes {shapes} for {windows} windows"
    return None


def check_protocol(cache: StatisticsCache, protocol: Mapping[str, Any]) -> None:
    """Record the window protocol in the cache folder; refuse to resume a log measured with another one."""
    recorded = cache.get_json(WINDOWS_FILE, lambda value: None if isinstance(value, dict) and {"bos", "bos_token_id"}
                              <= set(value) else "is not a window protocol ({bos, bos_token_id, ...})")
    if recorded is None:
        cache.put_json(WINDOWS_FILE, dict(protocol))
        return
    fields = ("bos", "bos_token_id")
    if any(recorded.get(f) != protocol.get(f) for f in fields):
        raise ValueError(
            f"the tune cache {cache.folder} was measured with windows {{bos: {recorded.get('bos')}, bos_token_id: "
            f"{recorded.get('bos_token_id')}}} but this run builds {{bos: {protocol['bos']}, bos_token_id: "
            f"{protocol['bos_token_id']}}}; scores under different window protocols are not comparable, so the "
            "run is not resumed from it: pass the --bos it was measured with, or another --cache folder"
        )


def _refine(start: SparsityProfile, start_record: Mapping[str, Any], proxy: WandaProxy, refine: RefineSettings,
            cache: StatisticsCache, progress: bool,
            suffix: str = "") -> tuple[dict[str, Any], tuple[list[str], np.ndarray]]:
    """Evolve ``start`` block by block; (its candidate record, (block names, refined ratios)).

    Every full and screening score goes to ``refine-<target><suffix>.jsonl`` keyed by the block ratios,
    so a rerun replays the same (seeded) search from the log and resumes where it stopped.
    """
    names, ratios, sizes, lower, upper = block_view(start)
    target = start.target
    log = CandidateLog(cache.path(f"refine-{target:.6g}{suffix}.jsonl"))
    screening = proxy.on_first(min(refine.screen_windows, len(proxy.windows)))
    began = time.perf_counter()

    def ratios_id(scope: str, candidate: np.ndarray) -> str:
        return candidate_id("refined", {"target": target, "windows": scope,
                                        "blocks": [round(float(x), 9) for x in candidate]})

    def scorer(scope: str, judge: WandaProxy):
        def score(candidate: np.ndarray) -> float:
            cid = ratios_id(scope, candidate)
            record = log.get(cid)
            if record is None:
                result = judge.score(shifted(start, names, candidate))
                record = {"id": cid, "kl": result.kl, "ppl": result.ppl}
                log.add(record)
            return record["kl"]
        return score

    found = evolve(ratios, sizes, lower, upper, score=scorer("all", proxy),
                   screen=scorer(f"first {len(screening.windows)}", screening),
                   settings=refine, start_score=start_record["kl"], progress=progress)
    ppl = log.get(ratios_id("all", found.ratios))["ppl"] if found.accepted else start_record["ppl"]
    params = {"from": start_record["method"], "from_params": start_record["params"], **asdict(refine)}
    record = {"id": candidate_id("refined", {"target": target, "from": start_record["id"], **asdict(refine)}),
              "method": "refined", "params": params, "target": target, "kl": found.score, "ppl": ppl,
              "seconds": time.perf_counter() - began, "projected": start.projected,
              "blocks": [float(x) for x in found.ratios], "history": [found.start_score, *found.history],
              "accepted": found.accepted}
    return record, (names, found.ratios)


def _profile(blocks, target, config, stats, alphas, provenance=None) -> SparsityProfile:
    alpha = alphas.get(config.xmin) if isinstance(config, AlphaConfig) else None
    return allocate_linears(blocks, target, config, input_sq_means=stats, alphas=alpha, progress=False,
                            provenance=provenance)


def describe_proxy(settings: TuneSettings) -> str:
    """One sentence naming the score, the data it is computed on and how masks are made."""
    return (f"{PROXY_NAME} (dense top-{settings.topk} + rest) on {settings.heldout_windows} held-out calibration "
            f"windows of {settings.heldout_seq_len} tokens (the last {settings.heldout_fraction:.0%}+ of the "
            f"calibration text); Wanda masks from {MASKS[settings.proxy]} of {settings.num_samples}x"
            f"{settings.seq_len} calibration tokens; lower is better")


def describe_windows(protocol: Mapping[str, Any]) -> str:
    """The window protocol of a tune run, for its log (``WindowProtocol.as_dict()``)."""
    how = f"[BOS={protocol['bos_token_id']}] + L-1 text tokens" if protocol["bos"] else "raw L text tokens"
    return f"every window is {how} (--bos {protocol['choice']})"


def ranked(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Records sorted by score, best first."""
    return sorted(records, key=lambda r: (r["kl"], r["method"]))


def uniform_record(records: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    return next((r for r in records if r["method"] == "uniform"), None)


def block_spread(record: Mapping[str, Any]) -> float:
    return float(np.ptp(record["blocks"])) if record.get("blocks") else 0.0
