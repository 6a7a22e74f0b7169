"""Tampered copies of a compact checkpoint, shared by the transformers and vLLM integrity tests.

Each builder copies a compact export (produced by the real exporter) and changes it the way a bad copy,
a careless edit or a hostile index would; ``TAMPERINGS`` names each one with what a loader must say.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from owl_plugin.formats.compact import decompress

INDEX = "model.safetensors.index.json"


def _edit_tensors(folder: Path, edit: Callable[[dict[str, torch.Tensor]], None], key: str) -> Path:
    """Rewrite the shard of ``folder`` that holds ``key`` with ``edit(tensors)`` applied; returns the shard."""
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, framework="pt") as handle:
            if key not in handle.keys():  # noqa: SIM118 (not a dict)
                continue
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        edit(tensors)
        save_file(tensors, path, metadata={"format": "pt"})
        return path
    raise AssertionError(f"{key} not found in {folder}")


def swap_mask_bits(bitmask: torch.Tensor, numel: int) -> torch.Tensor:
    """The bitmask with its first set bit and its first clear bit swapped: same popcount, other positions."""
    bits = np.unpackbits(bitmask.numpy(), bitorder="little")[:numel].copy()
    first_set, first_clear = int(np.flatnonzero(bits)[0]), int(np.flatnonzero(bits == 0)[0])
    bits[first_set], bits[first_clear] = 0, 1
    return torch.from_numpy(np.packbits(bits, bitorder="little"))


def mask_swap(compact: Path, target: Path, module: str) -> Path:
    """Two bits of ``module``'s mask swapped; every SPEC.md invariant still holds. Returns the edited shard."""
    shutil.copytree(compact, target)
    key = f"{module}.weight_bitmask"

    def edit(tensors: dict[str, torch.Tensor]) -> None:
        numel = int(tensors[f"{module}.weight_shape"].prod())
        tensors[key] = swap_mask_bits(tensors[key], numel)

    return _edit_tensors(target, edit, key)


def dense_twin(compact: Path, target: Path, module: str) -> Path:
    """``<module>.weight`` (dense, the same values) stored beside ``module``'s compressed pieces."""
    shutil.copytree(compact, target)

    def edit(tensors: dict[str, torch.Tensor]) -> None:
        tensors[f"{module}.weight"] = decompress(tensors[f"{module}.weight_values"],
                                                 tensors[f"{module}.weight_bitmask"],
                                                 tensors[f"{module}.weight_shape"], name=module)

    return _edit_tensors(target, edit, f"{module}.weight_values")


def drop_tensor(compact: Path, target: Path, key: str) -> Path:
    """``key`` (e.g. a norm or the embedding) deleted from its shard."""
    shutil.copytree(compact, target)
    return _edit_tensors(target, lambda tensors: tensors.pop(key), key)


def escaping_index(sharded: Path, target: Path, *, absolute: bool) -> tuple[str, str]:
    """A sharded compact copy whose index points one shard outside the folder (``../`` or absolute).

    The shard itself is moved there, so a loader that follows the path would read real weights.

    Returns:
        (a tensor name whose entry escapes, the escaping path as written in the index).
    """
    shutil.copytree(sharded, target)
    index = json.loads((target / INDEX).read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    outside = target.parent / f"{target.name}-outside"
    outside.mkdir()
    shutil.move(target / shard, outside / shard)
    escaped = str(outside / shard) if absolute else f"../{outside.name}/{shard}"
    names = [name for name, file in index["weight_map"].items() if file == shard]
    index["weight_map"].update(dict.fromkeys(names, escaped))
    (target / INDEX).write_text(json.dumps(index, indent=2))
    return names[0], escaped


def escaping_weights_file(compact: Path, target: Path) -> str:
    """A single-file compact copy whose config.json ``transformers_weights`` names a copy outside the folder."""
    shutil.copytree(compact, target)
    outside = target.parent / f"{target.name}-outside"
    outside.mkdir()
    shutil.copy2(target / "model.safetensors", outside / "model.safetensors")
    escaped = f"../{outside.name}/model.safetensors"
    config = json.loads((target / "config.json").read_text())
    config["transformers_weights"] = escaped
    (target / "config.json").write_text(json.dumps(config, indent=2))
    return escaped


def unlisted_module(compact: Path, target: Path, module: str) -> None:
    """``module`` dropped from config.json's ``compressed_modules``; its compressed pieces stay stored."""
    shutil.copytree(compact, target)
    config = json.loads((target / "config.json").read_text())
    config["quantization_config"]["compressed_modules"].remove(module)
    (target / "config.json").write_text(json.dumps(config, indent=2))
