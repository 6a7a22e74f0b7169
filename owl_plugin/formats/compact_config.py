"""The config.json side of the compact format: its ``quantization_config`` and its load guard.

SPEC.md fixes ``quantization_config``. Without owl-plugin, transformers 5 meets an unknown
``quant_method`` with a warning only, skips quantization and random-initialises every pruned
weight. So a compact checkpoint also carries a *load guard*: ``"transformers_weights"`` names
a weights file that does not exist (transformers 5 reads that key to pick the weights file).
Plain transformers therefore stops with a file-not-found error whose path tells the fix;
owl-plugin's quantizer removes the key before transformers looks for weights. Engines that find
weights on their own (vLLM) never read the key and dispatch on ``quant_method`` as usual.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

QUANT_METHOD = "owl_sparse"
FORMAT = "bitmask"
VERSION = 1
GUARD_KEY = "transformers_weights"
GUARD_FILE = "owl_sparse-checkpoint--load-it-with-owl-plugin--pip-install-owl-plugin.safetensors"


def quantization_config(modules: Sequence[str]) -> dict[str, Any]:
    """The ``quantization_config`` entry of SPEC.md for these compressed modules.

    Args:
        modules: full names of the compressed modules, in model order.

    Returns:
        A JSON-serialisable dict.
    """
    if not modules:
        raise ValueError("a compact checkpoint needs at least one compressed module; "
                         "nothing is pruned (no zeros found), export with --format dense")
    return {"quant_method": QUANT_METHOD, "format": FORMAT, "version": VERSION, "compressed_modules": list(modules)}


def is_compact(config: Mapping[str, Any]) -> bool:
    """True when a config.json dict describes a compact (owl_sparse) checkpoint."""
    quant = config.get("quantization_config")
    return isinstance(quant, Mapping) and quant.get("quant_method") == QUANT_METHOD


def compressed_modules(quant: Mapping[str, Any]) -> list[str]:
    """Validate an owl_sparse ``quantization_config`` and return its module names.

    Args:
        quant: the ``quantization_config`` dict of a compact checkpoint.

    Returns:
        The ``compressed_modules`` list.

    Raises:
        ValueError: another method, format or version, or a malformed module list.
    """
    if quant.get("quant_method") != QUANT_METHOD:
        raise ValueError(f"quant_method is {quant.get('quant_method')!r}, expected {QUANT_METHOD!r}")
    if quant.get("format") != FORMAT:
        raise ValueError(f"owl_sparse format {quant.get('format')!r} is not supported (expected {FORMAT!r}); "
                         "upgrade owl-plugin")
    if quant.get("version") != VERSION:
        raise ValueError(f"owl_sparse version {quant.get('version')!r} is not supported (expected {VERSION}); "
                         "upgrade owl-plugin")
    modules = quant.get("compressed_modules")
    if not isinstance(modules, list) or not modules or not all(isinstance(m, str) and m for m in modules):
        raise ValueError(f"owl_sparse compressed_modules must be a non-empty list of module names, got {modules!r}")
    return modules


def add_guard(config: dict[str, Any]) -> dict[str, Any]:
    """Set the load guard in a config.json dict (in place) and return it."""
    config[GUARD_KEY] = GUARD_FILE
    return config


def has_guard(config: Any) -> bool:
    """True when a config (dict or transformers config object) carries the load guard."""
    value = config.get(GUARD_KEY) if isinstance(config, Mapping) else getattr(config, GUARD_KEY, None)
    return value == GUARD_FILE
