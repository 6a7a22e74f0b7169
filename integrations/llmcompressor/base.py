"""Shared lifecycle of the allocation modifiers: find the pruner, allocate, hand over ratios.

An allocation modifier sits directly before a ``WandaPruningModifier`` or ``SparseGPTModifier``
in the same recipe stage. Under ``oneshot`` (any pipeline):

    Allocation.on_initialize   find the pruner; read target, targets, ignore; validate;
                               gather statistics (OWL: one layer-at-a-time pass over the
                               calibration data on the *dense* model); compute the profile;
                               ``pruner.sparsity = [ratio per pruner target]``
    Pruner.on_initialize       the pruner matches its targets and checks the list's length
    Pruner calibration epoch   the pruner prunes layer by layer with those ratios
    Allocation.on_finalize     measured sparsity of every module checked against the profile

N:M masks (``mask_structure: "N:M"``, N zeros in every M weights): llmcompressor 0.14 applies
one N to every module and ignores the ratios. Here the ratios allocated around S = N/M become
one N per unit (``owl_plugin.allocators.mixed_nm``, OWL's ``wanda_owl_structure``), recorded in
the profile (``params["nm"]``, ratio N/M per module, and the achieved mean, which rounding moves
off S). The pruner reads one ``_prune_n`` for every module, and oneshot's default "independent"
pipeline runs each modifier's calibration alone (no event of the pruner's epoch reaches this
modifier), so the hand-over is an override on *this pruner instance* only, installed at
initialisation and removed at finalisation: its ``compress_modules`` becomes
``_compress_mixed_nm``, which calls the class's own ``compress_modules`` once per N, with
``_prune_n`` set to that N and the other modules' sample counts held back. Nothing global
(classes, module functions) is patched; the private names used are checked at initialisation
so a changed llmcompressor fails loudly instead of pruning uniformly, and the measured zeros of
every group are checked against the profile at the end.

OWL needs every layer's statistics before the first layer is pruned, so its pass must come
first; doing it at initialisation with the core's collector costs one forward per layer (an
llmcompressor calibration epoch of its own would cost two: calibrate and propagate).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from llmcompressor.core import State, active_session
from llmcompressor.modifiers import Modifier
from llmcompressor.modifiers.pruning.sparsegpt.sgpt_base import SparsityModifierBase
from pydantic import PrivateAttr, field_validator
from torch import nn

from owl_plugin.allocate import allocate_linears, check_target
from owl_plugin.allocators.mixed_nm import MaskStructure, achieved_mean, mixed_nm_counts, parse_mask_structure
from owl_plugin.coverage import check_supported, coverage, is_router
from owl_plugin.experts import expert_of
from owl_plugin.layers import find_decoder_blocks
from owl_plugin.profile import ModuleSparsity, SparsityProfile
from owl_plugin.verify import measured_sparsities, profile_mismatches

from owl_plugin.integrations.llmcompressor.targets import exact_targets, pruned_modules

logger = logging.getLogger(__name__)

#: Profiles handed to pruners in this process, newest last (``owl prune`` saves them).
APPLIED_PROFILES: list[SparsityProfile] = []


class AllocationModifier(Modifier):
    """Base class: subclasses define ``core_config()`` (the core's validated config).

    :param sparsity: target S; default: the following pruner's ``sparsity``.
    :param targets: modules to prune; default: the pruner's ``targets`` (given here, they replace them).
    :param ignore: modules to skip; default: the pruner's ``ignore`` (given here, they replace them).
    :param granularity: ``"block"`` (one ratio per decoder block, as in the papers), ``"linear"``, or
        ``"expert"`` (each MoE expert one unit, the block's other linears another).
    :param bounds: every ratio stays in [lower, upper]; out-of-bound formulas are projected back.
    """

    method: ClassVar[str]

    sparsity: float | None = None
    targets: list[str] | None = None
    ignore: list[str] | None = None
    granularity: Literal["block", "linear", "expert"] = "block"
    bounds: tuple[float, float] = (0.0, 0.99)

    _pruner: SparsityModifierBase | None = PrivateAttr(default=None)
    _groups: dict[str, dict[str, nn.Module]] = PrivateAttr(default_factory=dict)
    _per_linear: bool = PrivateAttr(default=False)
    _profile: SparsityProfile | None = PrivateAttr(default=None)
    _structure: MaskStructure = PrivateAttr(default=MaskStructure(0, 0))
    _nm_counts: dict[str, int] = PrivateAttr(default_factory=dict)
    _provenance: dict[str, Any] = PrivateAttr(default_factory=dict)  # facts a subclass records in the profile

    #: pruner internals the per-module N:M hand-over uses (see module docstring)
    NM_PRUNER_INTERNALS: ClassVar[tuple[str, ...]] = ("_num_samples", "_module_names", "_prune_n", "_prune_m",
                                                      "compress_modules")

    @field_validator("targets", "ignore", mode="before")
    @classmethod
    def _as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def model_post_init(self, context: Any) -> None:
        super().model_post_init(context)
        self.core_config()  # validate hyperparameters at construction, with the core's messages
        if self.sparsity is not None:
            check_target(self.sparsity)

    def core_config(self):  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def profile(self) -> SparsityProfile | None:
        """The profile handed to the pruner (None before allocation)."""
        return self._profile

    # -- lifecycle ---------------------------------------------------------------------------
    def on_initialize(self, state: State, **kwargs) -> bool:
        pruner = self._find_pruner()
        self._pruner = pruner
        if pruner.sparsity_profile is not None:
            raise ValueError(
                f"{type(pruner).__name__}.sparsity_profile={pruner.sparsity_profile!r} conflicts with "
                f"{type(self).__name__}; remove sparsity_profile from the pruner"
            )
        self._structure = structure = parse_mask_structure(pruner.mask_structure)
        target = self.sparsity if self.sparsity is not None else pruner.sparsity
        if not structure.unstructured:
            self._check_nm_pruner(pruner)
            if target is None:
                target = structure.ratio
            elif isinstance(target, (int, float)) and abs(float(target) - structure.ratio) > 1e-9:
                raise ValueError(
                    f"sparsity={target!r} contradicts mask_structure={pruner.mask_structure!r}, which zeroes "
                    f"{structure.n} of every {structure.m} weights (sparsity {structure.ratio:g}); set "
                    f"sparsity: {structure.ratio:g} (the allocation moves N per block around it)"
                )
        if not isinstance(target, (int, float)):
            raise ValueError(
                f"{type(pruner).__name__}.sparsity={target!r}: the allocation needs one target sparsity "
                f"(a number); set it on the pruner or on {type(self).__name__}"
            )
        self.sparsity = check_target(target)
        pruner.sparsity = self.sparsity
        if self.targets is not None:
            pruner.targets = list(self.targets)
        if self.ignore is not None:
            pruner.ignore = list(self.ignore)
        self._groups = self._resolve_groups(state.model, pruner)
        if not structure.unstructured:
            self._check_nm_shapes()
        profile = self._allocate(state.model, input_sq_means=self.statistics(state))
        if not structure.unstructured:
            profile = self._to_mixed_nm(profile)
            # this pruner instance (only) compresses through _compress_mixed_nm until on_finalize
            object.__setattr__(pruner, "compress_modules", self._compress_mixed_nm)
        self._hand_over(profile)
        return True

    def statistics(self, state: State) -> dict[str, torch.Tensor] | None:
        """Per-linear activation statistics the method needs (None for data-free methods)."""
        return None

    def _compress_mixed_nm(self) -> None:
        """The pruner's ``compress_modules`` for N:M: its own method once per N, other modules held back."""
        pruner = self._pruner
        compress = type(pruner).compress_modules
        pending = list(pruner._num_samples)
        by_n: dict[int, list[nn.Module]] = {}
        for module in pending:
            name = pruner._module_names[module].rstrip(".")
            if name not in self._nm_counts:
                raise RuntimeError(f"{type(pruner).__name__} calibrated {name!r}, which the allocation did not cover")
            by_n.setdefault(self._nm_counts[name], []).append(module)
        base_n = pruner._prune_n
        try:
            for n, modules in sorted(by_n.items()):
                chosen = set(modules)
                held = {m: pruner._num_samples.pop(m) for m in pending if m not in chosen and m in pruner._num_samples}
                pruner._prune_n = n
                try:
                    compress(pruner)
                finally:
                    pruner._num_samples.update(held)
        finally:
            pruner._prune_n = base_n

    def on_finalize(self, state: State, **kwargs) -> bool:
        self.remove_hooks()
        if self._pruner is not None:  # calibration is over: drop the per-instance N:M override
            self._pruner.__dict__.pop("compress_modules", None)
        if self._profile is not None and self._pruner is not None and self._pruner.initialized:
            mismatches = profile_mismatches(self._profile, measured_sparsities(state.model, self._profile))
            if mismatches:
                logger.warning("pruned sparsity differs from the allocation for %d modules, e.g. %s",
                               len(mismatches), mismatches[:3])
        return True

    # -- helpers -------------------------------------------------------------------------------
    def _find_pruner(self) -> SparsityModifierBase:
        modifiers = list(active_session().lifecycle.recipe.modifiers)
        position = next(i for i, m in enumerate(modifiers) if m is self)
        for later in modifiers[position + 1:]:
            if isinstance(later, AllocationModifier):
                raise ValueError(
                    f"{type(self).__name__} is followed by another allocation modifier "
                    f"({type(later).__name__}) before any pruning modifier: use one allocation modifier per pruner"
                )
            if isinstance(later, SparsityModifierBase):
                return later
        raise ValueError(
            f"{type(self).__name__} must be followed, in the same recipe, by a pruning modifier "
            "(WandaPruningModifier or SparseGPTModifier) whose layers it allocates"
        )

    def _resolve_groups(self, model: nn.Module, pruner: SparsityModifierBase) -> dict[str, dict[str, nn.Module]]:
        check_supported(model)  # fused 3-D experts etc.: refused by name, not left dense under a "mean S"
        routers = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)
                   and is_router(name, module)]
        if routers:  # an MoE router/gate picks experts: never pruned
            pruner.ignore = [*(pruner.ignore or []), *exact_targets(routers)]
        groups = pruned_modules(model, pruner)
        if not any(groups.values()):
            raise ValueError(
                f"targets={pruner.targets!r} (ignore={pruner.ignore!r}) match no prunable module in "
                f"{type(model).__name__}; e.g. use targets: ['re:model\\\\.layers\\\\.\\\\d+$']"
            )
        prefix, blocks = find_decoder_blocks(model)
        block_names = {f"{prefix}.{i}" for i in range(len(blocks))}
        block_of = {}
        for members in groups.values():
            for name in members:
                block = next((b for b in block_names if name.startswith(b + ".")), None)
                if block is None:
                    raise ValueError(
                        f"{type(self).__name__}: module {name!r} is outside the decoder blocks ({prefix}.N); "
                        "allocation covers decoder blocks only: add it to ignore (e.g. 're:.*lm_head') "
                        "or target the blocks, e.g. targets: ['re:model\\\\.layers\\\\.\\\\d+$']"
                    )
                block_of[name] = block
        if self.granularity == "block":
            unit_of = block_of
        elif self.granularity == "expert":  # owl_plugin.experts: one unit per expert, the rest per block
            unit_of = {n: expert_of(n) or block for n, block in block_of.items()}
        else:
            unit_of = {n: n for n in block_of}
        self._per_linear = any(len({unit_of[n] for n in members}) > 1 for members in groups.values())
        if self._per_linear:  # one pruner target per module so each can get its own ratio
            names = [name for members in groups.values() for name in members]
            pruner.targets, pruner.ignore = exact_targets(names), []
            groups = pruned_modules(model, pruner)
        return groups

    def _check_nm_pruner(self, pruner: SparsityModifierBase) -> None:
        missing = [attr for attr in self.NM_PRUNER_INTERNALS if not hasattr(pruner, attr)]
        if missing:
            import llmcompressor

            raise RuntimeError(
                f"{type(self).__name__} with mask_structure={pruner.mask_structure!r} needs {type(pruner).__name__}"
                f".{', .'.join(missing)}, absent in llmcompressor {llmcompressor.__version__} (written for 0.14); "
                "use mask_structure: '0:0' or the llmcompressor version this plugin pins"
            )

    def _check_nm_shapes(self) -> None:
        m = self._structure.m
        for members in self._groups.values():
            for name, module in members.items():
                width = module.weight.shape[-1]
                if width % m:
                    raise ValueError(
                        f"mask_structure={str(self._structure)!r}: module {name!r} has {width} input features, "
                        f"not a multiple of M={m}; choose an M dividing every pruned width or ignore that module"
                    )

    def _to_mixed_nm(self, profile: SparsityProfile) -> SparsityProfile:
        """Turn the continuous ratios into one N per unit (mixed N:M), and record what is achieved."""
        structure = self._structure
        names = list(profile.modules)
        mixed = mixed_nm_counts(np.array([profile.modules[n].sparsity for n in names]), structure, bounds=self.bounds)
        self._nm_counts = dict(zip(names, (int(n) for n in mixed.counts), strict=True))
        modules = {
            n: ModuleSparsity(self._nm_counts[n] / structure.m, e.num_params, e.block)
            for n, e in profile.modules.items()
        }
        mean = achieved_mean(mixed.counts, structure.m, np.array([profile.modules[n].num_params for n in names]))
        allocated = profile.block_sparsities() if self.granularity == "block" else profile.sparsities
        params = {
            **profile.params,
            "mask_structure": str(structure),
            "achieved_mean": mean,
            "allocated_ratios": {unit: float(r) for unit, r in allocated.items()},
            "nm": {n: f"{c}:{structure.m}" for n, c in self._nm_counts.items()},
        }
        result = SparsityProfile(
            method=profile.method, target=profile.target, modules=modules, params=params, scores=profile.scores,
            bounds=profile.bounds, projected=profile.projected or mixed.clipped,
        )
        counts = sorted(set(self._nm_counts.values()))
        message = ("mixed N:M %s: N per unit in %s; achieved mean sparsity %.4f vs target %.4f "
                   "(N is rounded per unit, so the mean moves)")
        log = logger.warning if abs(mean - profile.target) > 1e-9 else logger.info
        log(message, structure, counts, mean, profile.target)
        return result

    def _blocks(self, model: nn.Module) -> dict[str, dict[str, nn.Module]]:
        prefix, blocks = find_decoder_blocks(model)
        members = {name: m for group in self._groups.values() for name, m in group.items()}
        result: dict[str, dict[str, nn.Module]] = {}
        for i in range(len(blocks)):
            block = f"{prefix}.{i}"
            inside = {n: m for n, m in members.items() if n.startswith(block + ".")}
            if inside:
                result[block] = inside
        return result

    def _allocate(self, model: nn.Module, *, input_sq_means) -> SparsityProfile:
        blocks = self._blocks(model)
        covered = coverage(model, [name for members in blocks.values() for name in members]).to_dict()
        with torch.no_grad():
            return allocate_linears(
                blocks, self.sparsity, self.core_config(), input_sq_means=input_sq_means,
                provenance={"pruner": type(self._pruner).__name__, "modifier": type(self).__name__,
                            "coverage": covered, **self._provenance},
            )

    def _hand_over(self, profile: SparsityProfile) -> None:
        """Write the profile into the pruner's per-target ``sparsity`` list (in its target order)."""
        ratios = []
        for target, members in self._groups.items():
            values = {profile.modules[name].sparsity for name in members} or {profile.target}
            if len(values) != 1:  # cannot happen: _resolve_groups split such targets
                raise RuntimeError(f"target {target!r} would need several ratios: {sorted(values)}")
            ratios.append(values.pop())
        self._pruner.sparsity = ratios
        self._profile = profile
        APPLIED_PROFILES.append(profile)
        logger.info("%s → %s: %s", type(self).__name__, type(self._pruner).__name__, profile.summary())
