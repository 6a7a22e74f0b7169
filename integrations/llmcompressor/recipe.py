"""Catch recipe shapes that llmcompressor would silently ignore.

llmcompressor only reads modifiers nested as ``<name>_stage: → <name>_modifiers: → Modifier:``.
A flat recipe (modifiers at the top level, or directly under a stage) yields *no* modifiers and
leaves the model dense without a word; we refuse it before loading anything.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

NESTING_HINT = (
    "nest modifiers as\n  sparsity_stage:\n    sparsity_modifiers:\n"
    "      OWLAllocationModifier: {}\n      WandaPruningModifier: {sparsity: 0.7, ...}"
)


def read_recipe(recipe: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """Return (YAML text, parsed dict) of a recipe file and check its nesting."""
    path = Path(recipe)
    if not path.is_file():
        raise FileNotFoundError(f"recipe file {str(recipe)!r} does not exist")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"recipe {str(recipe)!r} is not valid YAML: {error}") from error
    check_recipe_nesting(data, where=str(recipe))
    return text, data


def check_recipe_nesting(data: Any, *, where: str = "recipe") -> None:
    """Raise if ``data`` would give llmcompressor no modifiers (see module docstring)."""
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{where}: a recipe must be a YAML mapping of stages; {NESTING_HINT}")
    found = 0
    for stage, body in data.items():
        if stage.endswith("Modifier") or stage.endswith("_modifiers"):
            raise ValueError(f"{where}: {stage!r} is at the top level, where llmcompressor ignores it; {NESTING_HINT}")
        if not stage.endswith("_stage"):
            continue
        if not isinstance(body, dict):
            raise ValueError(f"{where}: stage {stage!r} must be a mapping; {NESTING_HINT}")
        for group, modifiers in body.items():
            if group.endswith("Modifier"):
                raise ValueError(
                    f"{where}: {group!r} sits directly under {stage!r}, where llmcompressor ignores it; {NESTING_HINT}"
                )
            if group.endswith("_modifiers"):
                if not isinstance(modifiers, dict):
                    raise ValueError(f"{where}: {stage}.{group} must map modifier names to their fields")
                for name, fields in modifiers.items():
                    if fields is None:
                        raise ValueError(
                            f"{where}: {name} needs a mapping of fields; write `{name}: {{}}` for defaults")
                    if isinstance(fields, dict) and "mask_structure" in fields:
                        _check_mask_structure(fields["mask_structure"], where=f"{where}: {name}")
                    if isinstance(fields, dict) and "sparsity" in fields:
                        _check_sparsity(fields["sparsity"], where=f"{where}: {name}")
                found += len(modifiers)
    if not found:
        raise ValueError(f"{where}: no modifiers found; {NESTING_HINT}")


def _check_sparsity(value: Any, *, where: str) -> None:
    """Refuse a ``sparsity`` outside [0, 1) (a number, or a list / mapping of numbers) before any work:
    without an allocation modifier llmcompressor takes it as is and fails only after the whole prune."""
    values = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
    for item in values:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not 0.0 <= item < 1.0:
            raise ValueError(f"{where}: sparsity={item!r} must be a number in [0, 1), e.g. 0.7")


def _check_mask_structure(value: Any, *, where: str) -> None:
    """Refuse a malformed ``mask_structure`` by name (llmcompressor fails on it with an unpacking error)."""
    from owl_plugin.allocators.mixed_nm import parse_mask_structure

    try:
        parse_mask_structure(value)
    except ValueError as error:
        hint = ""
        if isinstance(value, int):  # YAML 1.1 reads unquoted 2:4 as the base-60 integer 124
            hint = f"; quote it in YAML (mask_structure: \"2:4\"): unquoted N:M is read as the number {value}"
        raise ValueError(f"{where}: {error}{hint}") from error
