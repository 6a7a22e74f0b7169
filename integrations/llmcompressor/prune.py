"""``owl prune``: load a model and calibration text, run ``llmcompressor.oneshot`` with a recipe,
check the result against the allocation, and save the checkpoint with its profile, atomically.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from owl_plugin.coverage import check_supported
from owl_plugin.models import load_model
from owl_plugin.plot import plot_profiles
from owl_plugin.profile import ModuleSparsity, SparsityProfile
from owl_plugin.staging import check_destination, kill_point, publish, staged_folder
from owl_plugin.text import calibration_batches, heldout_split, load_text, tokenize, window_protocol
from owl_plugin.verify import measured_sparsities, overall_sparsity, profile_mismatches

import llmcompressor  # noqa: F401,I001  first: its start-up hook imports .modifiers → .base whole, not half-imported

from owl_plugin.integrations.llmcompressor.base import APPLIED_PROFILES
from owl_plugin.integrations.llmcompressor.compare import (
    HELDOUT_FRACTION,
    HELDOUT_WINDOWS,
    UniformComparison,
    uniform_recipe,
)
from owl_plugin.integrations.llmcompressor.experts import fused_for_saving
from owl_plugin.integrations.llmcompressor.recipe import read_recipe

logger = logging.getLogger(__name__)

#: overall measured sparsity must match the target this closely (absolute), or within one
#: weight per row where rows are so short that one weight is more than that
OVERALL_TOLERANCE = 0.005


@dataclass(frozen=True)
class PruneResult:
    output: Path
    profile: SparsityProfile
    measured_sparsity: float
    comparison: UniformComparison | None = None


def calibration_dataset(tokenizer, source: str, *, num_samples: int, seq_len: int, seed: int,
                        bos_token_id: int | None = None):
    """A ``datasets.Dataset`` of ``num_samples`` token windows (input_ids, attention_mask), each starting
    with ``bos_token_id`` if given (``owl_plugin.text.calibration_batches``)."""
    return token_dataset(tokenize(tokenizer, load_text(source)), num_samples=num_samples, seq_len=seq_len,
                         seed=seed, bos_token_id=bos_token_id)


def token_dataset(token_ids, *, num_samples: int, seq_len: int, seed: int, bos_token_id: int | None = None):
    """``calibration_dataset`` from an already tokenized stream (1-D tensor)."""
    from datasets import Dataset

    batches = calibration_batches(token_ids, num_samples=num_samples, seq_len=seq_len, seed=seed,
                                  bos_token_id=bos_token_id)
    ids = [b[0].tolist() for b in batches]
    return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(i) for i in ids]})


def measured_profile(model) -> SparsityProfile:
    """A profile describing what a pruner without an allocation modifier actually did."""
    from owl_plugin.layers import prunable_linears
    from owl_plugin.verify import measure

    modules = {
        name: ModuleSparsity(measure(linear.weight).sparsity, linear.weight.numel(), block)
        for block, linears in prunable_linears(model).items() for name, linear in linears.items()
    }
    pruned = {n: m for n, m in modules.items() if m.sparsity > 0} or modules
    total = sum(m.num_params for m in pruned.values())
    mean = sum(m.sparsity * m.num_params for m in pruned.values()) / total
    return SparsityProfile(method="measured", target=mean, modules=pruned, params={"note": "no allocation modifier"})


def nm_summary(profile: SparsityProfile) -> str | None:
    """For a mixed N:M profile, one line with the N:M counts and the achieved mean vs the target."""
    structure = profile.params.get("mask_structure")
    if structure is None:
        return None
    counts: dict[str, int] = {}
    for value in profile.params.get("nm", {}).values():
        counts[value] = counts.get(value, 0) + 1
    spread = ", ".join(f"{k} ×{v}" for k, v in sorted(counts.items(), key=lambda kv: int(kv[0].split(":")[0])))
    return (f"mixed N:M around {structure}: {spread} modules; achieved mean sparsity {profile.mean_sparsity():.4f} "
            f"vs target {profile.target:.4f} ({profile.mean_sparsity() - profile.target:+.4f}, N rounded per unit)")


def prune(
    model: str,
    recipe: str | os.PathLike,
    output: str | os.PathLike,
    *,
    dataset: str = "pydoc",
    num_samples: int = 128,
    seq_len: int = 512,
    seed: int = 0,
    overwrite: bool = False,
    bos: str = "auto",
    compare_uniform: bool = False,
) -> PruneResult:
    """Prune ``model`` with ``recipe`` through ``llmcompressor.oneshot`` and save it to ``output``.

    The output folder holds the transformers checkpoint (dense tensors with zeros),
    ``sparsity_profile.json``, ``sparsity_profile.png`` and ``recipe.yaml``. It is written to
    a temporary folder beside ``output`` and renamed into place only after the measured
    per-module sparsity has been checked against the profile. ``bos`` (auto | on | off) says whether
    calibration windows start with the model's BOS (``owl_plugin.text.window_protocol``); the choice
    is recorded in the profile's ``params["calibration"]["windows"]``.

    ``compare_uniform``: hold out the tail of the calibration text, prune a second copy uniformly
    with the same pruner, and score both on the held-out windows
    (``owl_plugin.integrations.llmcompressor.compare``; the result is in ``PruneResult.comparison``
    and the profile). It costs a second prune and holds two copies of the model in memory.
    """
    from owl_plugin.integrations.llmcompressor import register_modifiers
    from llmcompressor import oneshot

    register_modifiers()

    output = check_destination(output, inputs=(model, recipe), overwrite=overwrite,  # before any work
                               flag="overwrite=True (owl prune --overwrite)")
    recipe_text, recipe_data = read_recipe(recipe)
    if compare_uniform:  # a recipe without an allocation modifier is refused before the model is loaded
        uniform_recipe(recipe_data, 0.5, _allocation_names())
    pretrained, tokenizer = load_model(model)
    kill_point("model-loaded")
    # before calibration: weights neither nn.Linear nor fused experts oneshot splits per expert are refused by name
    check_supported(pretrained, fused_experts="allow")
    protocol = window_protocol(tokenizer, bos)
    logger.info("%s", protocol.describe())
    token_ids = tokenize(tokenizer, load_text(dataset))
    heldout = None
    if compare_uniform:
        token_ids, heldout = heldout_split(token_ids, fraction=HELDOUT_FRACTION, windows=HELDOUT_WINDOWS,
                                           window_len=seq_len, head_min=seq_len)
    data = token_dataset(token_ids, num_samples=num_samples, seq_len=seq_len, seed=seed,
                         bos_token_id=protocol.bos_token_id)

    kill_point("calibration-ready")
    APPLIED_PROFILES.clear()
    pruned = oneshot(
        model=pretrained, processor=tokenizer, dataset=data, recipe=str(recipe),
        num_calibration_samples=num_samples, max_seq_length=seq_len, shuffle_calibration_samples=False,
    )
    if len(APPLIED_PROFILES) > 1:
        raise ValueError(f"the recipe allocated {len(APPLIED_PROFILES)} times; use one allocation modifier")
    profile = APPLIED_PROFILES[0] if APPLIED_PROFILES else measured_profile(pruned)
    profile = SparsityProfile(**{**profile.__dict__, "params": {**profile.params, "calibration": {
        "source": dataset, "num_samples": num_samples, "seq_len": seq_len, "seed": seed,
        "windows": protocol.as_dict(),
        **({"heldout": {"fraction": HELDOUT_FRACTION, "tokens": heldout.numel()}} if heldout is not None else {})}}})

    measured = measured_sparsities(pruned, profile)
    mismatches = profile_mismatches(profile, measured)
    if mismatches:
        raise RuntimeError(f"pruned sparsity differs from the allocation: {mismatches[:5]}")
    achieved = overall_sparsity(measured, profile)
    # mixed N:M rounds N per unit, so its mean is the profile's achieved mean, not the target
    expected = profile.mean_sparsity() if "mask_structure" in profile.params else profile.target
    tolerance = max(OVERALL_TOLERANCE, max(1.0 / m.row_length for m in measured.values()))
    if abs(achieved - expected) > tolerance:
        raise RuntimeError(
            f"overall sparsity {achieved:.4f} is off the allocated mean {expected:.4f} by more than {tolerance:.4f}"
        )
    logger.info("applied %s; measured overall sparsity %.4f", profile.summary(), achieved)
    if nm_summary(profile):
        logger.warning("%s", nm_summary(profile))

    comparison = None
    if heldout is not None:
        comparison = _compare_with_uniform(pruned, model, recipe_data, profile, data, heldout, seq_len=seq_len,
                                           num_samples=num_samples, bos_token_id=protocol.bos_token_id,
                                           tolerance=tolerance)
        logger.info("%s", comparison.summary())
        profile = SparsityProfile(**{**profile.__dict__, "params": {**profile.params,
                                                                    "compare_uniform": comparison.as_dict()}})

    kill_point("pruned")
    profile = fused_for_saving(pruned, profile)  # MoE: experts packed back, profile named as the checkpoint's tensors
    _save(pruned, tokenizer, profile, recipe_text, output, overwrite=overwrite)
    return PruneResult(output=output, profile=profile, measured_sparsity=achieved, comparison=comparison)


def _allocation_names() -> set[str]:
    from owl_plugin.integrations.llmcompressor.modifiers import ALLOCATION_MODIFIERS

    return {cls.__name__ for cls in ALLOCATION_MODIFIERS}


def _compare_with_uniform(pruned, model: str, recipe_data: dict, profile: SparsityProfile, data, heldout, *,
                          seq_len: int, num_samples: int, bos_token_id: int | None,
                          tolerance: float) -> UniformComparison:
    """Held-out perplexity of ``pruned`` and of a fresh copy pruned uniformly at the profile's target."""
    import tempfile

    import yaml
    from llmcompressor import oneshot

    from owl_plugin.evaluation import perplexity

    score = {"seq_len": seq_len, "max_windows": HELDOUT_WINDOWS, "bos_token_id": bos_token_id}
    ppl = perplexity(pruned, heldout, **score)
    logger.info("--compare-uniform: pruning a second copy uniformly at %.4f with the same pruner", profile.target)
    copy, tokenizer = load_model(model)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as handle:
        yaml.safe_dump(uniform_recipe(recipe_data, profile.target, _allocation_names()), handle)
        handle.flush()
        uniform = oneshot(model=copy, processor=tokenizer, dataset=data, recipe=handle.name,
                          num_calibration_samples=num_samples, max_seq_length=seq_len,
                          shuffle_calibration_samples=False)
    achieved = measured_profile(uniform).target
    if abs(achieved - profile.target) > tolerance:
        raise RuntimeError(f"the uniform comparison pruned to {achieved:.4f}, not the target {profile.target:.4f}")
    uniform_ppl = perplexity(uniform, heldout, **score)
    del uniform, copy
    windows = min(HELDOUT_WINDOWS, heldout.numel() // (seq_len - (bos_token_id is not None)))
    return UniformComparison(method=profile.method, target=profile.target, ppl=ppl, uniform_ppl=uniform_ppl,
                             windows=windows, seq_len=seq_len, heldout_fraction=HELDOUT_FRACTION)


def _save(model, tokenizer, profile: SparsityProfile, recipe_text: str, output: Path, *, overwrite: bool) -> None:
    """Stage beside ``output``, fsync, publish with a no-replace rename (``owl_plugin.staging``)."""
    with staged_folder(output) as staging:
        model.save_pretrained(staging)
        kill_point("weights-saved")
        tokenizer.save_pretrained(staging)
        _strip_sparsity_config(staging / "config.json")
        profile.save(staging)
        plot_profiles(profile, staging / "sparsity_profile.png")
        (staging / "recipe.yaml").write_text(recipe_text)
        if not any(staging.glob("*.safetensors")):
            raise RuntimeError(f"{staging}: no safetensors weights were written")
        publish(staging, output, overwrite=overwrite)


def _strip_sparsity_config(config_path: Path) -> None:
    """vLLM rejects checkpoints with a sparsity_config; pruned weights are plain dense tensors."""
    config = json.loads(config_path.read_text())
    quant = config.get("quantization_config")
    if isinstance(quant, dict) and "sparsity_config" in quant:
        quant.pop("sparsity_config")
        if set(quant) <= {"quant_method", "format", "version", "config_groups"} and not quant.get("config_groups"):
            config.pop("quantization_config")
        config_path.write_text(json.dumps(config, indent=2))
