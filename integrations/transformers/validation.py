"""Check a compact checkpoint's compressed tensors before transformers loads any weight.

:func:`checkpoint_folder` and :func:`check_files_inside` refuse shard paths that leave the checkpoint
folder (an edited index ``weight_map``: transformers itself joins them to the folder unchecked);
``owl_plugin.checkpoint.CheckpointFolder`` then verifies completeness, dense twins and the per-tensor
checksums (``owl_plugin.formats.integrity``).

transformers catches errors raised inside weight conversions, lists them in its load report
and then raises a generic "issues during automatic conversion" RuntimeError. Checking up
front makes the error itself name the broken tensor. Only the small tensors are read (the
bitmask and the shape); the values are checked through their header.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from owl_plugin.checkpoint import CONFIG_NAME, check_safetensors_file, weight_files
from owl_plugin.formats.integrity import CheckpointPathError
from owl_plugin.formats.compact import CompactFormatError, check_compressed, compressed_keys

from owl_plugin.integrations.transformers.moe import merged_into_fused_experts

logger = logging.getLogger(__name__)
_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64,
           "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64,
           "BOOL": torch.bool}


def name_candidates(model: torch.nn.Module, name: str) -> tuple[str, ...]:
    """``name`` as a checkpoint spells it, then as ``model`` may: a causal LM's checkpoint (``model.layers.0...``)
    loaded into its base model (``AutoModel``: ``layers.0...``), or the reverse, differ by the base-model prefix."""
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    return (name, name.removeprefix(prefix), prefix + name)


def module_name(model: torch.nn.Module, name: str) -> str:
    """The first of :func:`name_candidates` that is a module of ``model`` (``name`` itself when none is)."""
    for candidate in name_candidates(model, name):
        try:
            model.get_submodule(candidate)
            return candidate
        except AttributeError:
            continue
    return name


def _parameter_shape(model: torch.nn.Module, name: str) -> tuple[int, ...] | None:
    """Shape of ``name`` in ``model``, also when the checkpoint and the model differ by the base-model prefix."""
    for candidate in name_candidates(model, name):
        try:
            return tuple(model.get_parameter(candidate).shape)
        except AttributeError:
            continue
    return None


def validate_checkpoint(files: Sequence[str], modules: Sequence[str], model: torch.nn.Module) -> None:
    """Raise on the first compressed module whose tensors break SPEC.md or do not fit ``model``.

    Args:
        files: the checkpoint's safetensors files.
        modules: ``quantization_config.compressed_modules``.
        model: the (meta) model about to be loaded.

    Raises:
        CompactFormatError: naming the module's tensor and what is wrong with it.
        CorruptCheckpointError: a truncated file, naming it and the tensors cut off.
    """
    files = [path for path in files if str(path).endswith(".safetensors")]
    for path in files:
        check_safetensors_file(path)
    handles = [safe_open(path, framework="pt") for path in files]
    where = {key: handle for handle in handles for key in handle.keys()}  # noqa: SIM118 (not a dict)
    for module in tqdm(modules, desc="check owl_sparse tensors", unit="weight", disable=None):
        name = f"{module}.weight"
        keys = compressed_keys(module)
        missing = [key for key in keys.values() if key not in where]
        if missing:
            raise CompactFormatError(f"{name}: the checkpoint lacks {missing}; the compact checkpoint is incomplete, "
                                     "export it again with `owl export MODEL --format compact`")
        expected = _parameter_shape(model, name)
        if expected is None and merged_into_fused_experts(model, name):
            expected = ()  # an expert matrix transformers fuses into 3-D experts: its shape is checked at the merge
        elif expected is None:
            raise CompactFormatError(f"{name}: listed in quantization_config.compressed_modules, but "
                                     f"{type(model).__name__} has no such parameter; the checkpoint belongs to "
                                     "another architecture")
        values = where[keys["values"]].get_slice(keys["values"])
        dtype = values.get_dtype()
        check_compressed(_DTYPES.get(dtype, dtype), tuple(values.get_shape()),
                         where[keys["bitmask"]].get_tensor(keys["bitmask"]),
                         where[keys["shape"]].get_tensor(keys["shape"]), name=name, expected_shape=expected or None)


def checkpoint_folder(model: torch.nn.Module, files: Sequence[str]) -> Path | None:
    """The folder the checkpoint was loaded from: the local ``name_or_path``, else the shards' folder that holds
    config.json (a Hub cache snapshot); None when there is none (then only the per-tensor checks run)."""
    name = str(getattr(model.config, "_name_or_path", "") or "")
    if name and (Path(name) / CONFIG_NAME).is_file():
        return Path(name)
    parents = {Path(os.path.normpath(path)).parent for path in files}
    found = [parent for parent in sorted(parents) if (parent / CONFIG_NAME).is_file()]
    if len(found) != 1:
        logger.warning("owl_sparse: cannot tell the checkpoint folder of %s; its checksums are not verified", name)
        return None
    return found[0]


def check_files_inside(folder: Path, files: Sequence[str]) -> None:
    """Refuse shard paths outside ``folder`` (naming the index entry, else the path transformers resolved).

    Raises:
        CheckpointPathError: a ``weight_map`` / ``transformers_weights`` entry or a resolved shard leaves the folder.
    """
    weight_files(folder)  # names the bad index entry
    root = os.path.abspath(folder)
    for path in files:
        full = os.path.abspath(path)
        if os.path.commonpath([root, full]) != root:
            raise CheckpointPathError(f"transformers resolved the weights file {path}, which is outside the "
                                      f"checkpoint folder {folder}; a checkpoint may only read its own files "
                                      "(edited index? export or download it again)")
