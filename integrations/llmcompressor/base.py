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

OWL needs every layer's statistics before the first layer is pruned, so its pass must come
first; doing it at initialisation with the core's collector costs one forward per layer (an
llmcompressor calibration epoch of its own would cost two: calibrate and propagate).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal

import torch
from llmcompressor.core import State, active_session
from llmcompressor.modifiers import Modifier
from llmcompressor.modifiers.pruning.sparsegpt.sgpt_base import SparsityModifierBase
from pydantic import Field, PrivateAttr, field_validator
from torch import nn

from owl_plugin.allocate import allocate_linears, check_target
from owl_plugin.layers import find_decoder_blocks
from owl_plugin.profile import SparsityProfile
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
    :param granularity: ``"block"`` (one ratio per decoder block, as in the papers) or ``"linear"``.
    :param bounds: every ratio stays in [lower, upper]; out-of-bound formulas are projected back.
    """

    method: ClassVar[str]

    sparsity: float | None = None
    targets: list[str] | None = None
    ignore: list[str] | None = None
    granularity: Literal["block", "linear"] = "block"
    bounds: tuple[float, float] = (0.0, 0.99)

    _pruner: SparsityModifierBase | None = PrivateAttr(default=None)
    _groups: dict[str, dict[str, nn.Module]] = PrivateAttr(default_factory=dict)
    _per_linear: bool = PrivateAttr(default=False)
    _profile: SparsityProfile | None = PrivateAttr(default=None)

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
        if pruner.mask_structure != "0:0":
            raise ValueError(
                f"{type(pruner).__name__}.mask_structure={pruner.mask_structure!r}: N:M masks ignore per-layer "
                f"ratios in llmcompressor 0.14, so {type(self).__name__} supports only unstructured '0:0'"
            )
        target = self.sparsity if self.sparsity is not None else pruner.sparsity
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
        self._hand_over(self._allocate(state.model, input_sq_means=self.statistics(state)))
        return True

    def statistics(self, state: State) -> dict[str, torch.Tensor] | None:
        """Per-linear activation statistics the method needs (None for data-free methods)."""
        return None

    def on_finalize(self, state: State, **kwargs) -> bool:
        self.remove_hooks()
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
        unit_of = block_of if self.granularity == "block" else {n: n for n in block_of}
        self._per_linear = any(len({unit_of[n] for n in members}) > 1 for members in groups.values())
        if self._per_linear:  # one pruner target per module so each can get its own ratio
            names = [name for members in groups.values() for name in members]
            pruner.targets, pruner.ignore = exact_targets(names), []
            groups = pruned_modules(model, pruner)
        return groups

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
        with torch.no_grad():
            return allocate_linears(
                self._blocks(model), self.sparsity, self.core_config(), input_sq_means=input_sq_means,
                provenance={"pruner": type(self._pruner).__name__, "modifier": type(self).__name__},
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
