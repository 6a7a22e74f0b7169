"""What a llmcompressor pruning modifier will prune, resolved exactly as it resolves it.

``SparsityModifierBase`` (Wanda, SparseGPT) matches its ``targets`` (usually whole decoder
layers), then every prunable module inside each target, minus ``ignore``, and gives all
modules of target *i* the ratio ``sparsity[i]``. We mirror that walk so the allocation is
keyed by the same module names the pruner uses.
"""

from __future__ import annotations

import re

from compressed_tensors.utils import match_named_modules, match_targets
from llmcompressor.modifiers.pruning.sparsegpt.sgpt_base import PRUNABLE_LAYER_TYPES, SparsityModifierBase
from torch import nn


def pruned_modules(model: nn.Module, pruner: SparsityModifierBase) -> dict[str, dict[str, nn.Module]]:
    """Pruner target name → {full module name → module} the pruner will prune, in its order."""
    groups: dict[str, dict[str, nn.Module]] = {}
    for target_name, target in match_named_modules(model, pruner.targets):
        members = {}
        for name, module in match_named_modules(target, PRUNABLE_LAYER_TYPES):
            pruner_name = f"{target_name}.{name}"  # the pruner's own naming (trailing "." when name == "")
            if isinstance(module, nn.Embedding) or match_targets(pruner_name, module, pruner.ignore):
                continue
            members[pruner_name.rstrip(".")] = module
        groups[target_name] = members
    return groups


def exact_targets(names: list[str]) -> list[str]:
    """One anchored regex target per module name, for per-linear ratios."""
    return [f"re:^{re.escape(name)}$" for name in names]
