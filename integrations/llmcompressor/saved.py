"""ProfileAllocationModifier: hand a saved sparsity profile (e.g. the best one ``owl tune`` found) to the pruner.

Recipe:

    sparsity_stage:
      sparsity_modifiers:
        ProfileAllocationModifier: {profile_file: tuned/sparsity_profile.json}
        WandaPruningModifier: {sparsity: 0.7, mask_structure: "0:0", targets: ["re:model\\\\.layers\\\\.\\\\d+$"]}

Nothing is measured: the ratios come from the file. The profile must name exactly the modules
the pruner will prune (with the same sizes). If the pruner's target differs from the profile's,
the profile is rescaled to it (``SparsityProfile.rescaled``) with a warning.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from llmcompressor.core import State
from torch import nn

from owl_plugin.profile import SparsityProfile

from owl_plugin.integrations.llmcompressor.base import AllocationModifier

logger = logging.getLogger(__name__)


class ProfileAllocationModifier(AllocationModifier):
    """Per-module ratios read from a ``sparsity_profile.json`` (a file, or a folder holding one).

    :param profile_file: path of the saved profile.
    Plus the common fields of ``AllocationModifier`` (sparsity, targets, ignore, bounds);
    ``granularity`` is set from the profile (``linear`` when a block's modules differ).
    """

    method = "profile"

    profile_file: str

    def core_config(self) -> SparsityProfile:
        path = Path(self.profile_file)
        if not path.exists():
            raise ValueError(f"ProfileAllocationModifier.profile_file={self.profile_file!r} does not exist; "
                             "pass a sparsity_profile.json written by `owl profile` or `owl tune`")
        return SparsityProfile.load(path)

    def on_initialize(self, state: State, **kwargs) -> bool:
        saved = self.core_config()
        per_block: dict[str, set[float]] = {}
        for entry in saved.modules.values():
            per_block.setdefault(entry.block, set()).add(entry.sparsity)
        self.granularity = "linear" if any(len(v) > 1 for v in per_block.values()) else "block"
        return super().on_initialize(state, **kwargs)

    def _allocate(self, model: nn.Module, *, input_sq_means) -> SparsityProfile:
        saved = self.core_config()
        pruned = {name: module for group in self._groups.values() for name, module in group.items()}
        missing = [n for n in pruned if n not in saved.modules]
        extra = [n for n in saved.modules if n not in pruned]
        if missing or extra:
            raise ValueError(
                f"profile_file={self.profile_file!r} does not match the pruner's modules: "
                f"{len(missing)} pruned module(s) missing from it (e.g. {missing[:2]}), {len(extra)} in it "
                f"but not pruned (e.g. {extra[:2]}); write the profile for the same model and targets"
            )
        wrong = [n for n, m in pruned.items() if m.weight.numel() != saved.modules[n].num_params]
        if wrong:
            raise ValueError(f"profile_file={self.profile_file!r} was written for another model: "
                             f"{wrong[0]!r} has {pruned[wrong[0]].weight.numel()} weights, the profile says "
                             f"{saved.modules[wrong[0]].num_params}")
        if not math.isclose(saved.target, self.sparsity, abs_tol=1e-9):
            logger.warning("profile %s targets %.4f, the pruner %.4f: rescaling the profile to the pruner's target",
                           self.profile_file, saved.target, self.sparsity)
            saved = saved.rescaled(self.sparsity)
        return SparsityProfile(
            method=saved.method, target=saved.target, modules=saved.modules,
            params={**saved.params, "profile_file": str(self.profile_file),
                    "pruner": type(self._pruner).__name__, "modifier": type(self).__name__},
            scores=saved.scores, bounds=saved.bounds, projected=saved.projected,
        )
