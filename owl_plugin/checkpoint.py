"""Read a transformers safetensors checkpoint folder one tensor at a time.

``CheckpointFolder`` opens every shard lazily (safetensors ``safe_open``, memory-mapped) and
never materialises more than the tensor asked for. A compact (owl_sparse) folder is read
through the same interface: ``dense_names()`` / ``read_dense()`` show the ordinary
``<module>.weight`` tensors and decompress on the fly, ``raw_names()`` / ``read_raw()`` show
what is stored.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from owl_plugin.formats.compact import WEIGHT_SUFFIX, compressed_keys, decompress
from owl_plugin.formats.compact_config import GUARD_KEY, compressed_modules, has_guard, is_compact
from owl_plugin.formats.integrity import check_compact_tensors, member_path

CONFIG_NAME = "config.json"
_DIGITS = re.compile(r"(\d+)")
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def natural_key(name: str) -> list:
    """Sort key that puts ``layers.2`` before ``layers.10``."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in _DIGITS.split(name)]


class CorruptCheckpointError(ValueError):
    """A weights file is truncated, missing or has an unreadable header."""


_MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
_FILE_FIX = "the file is incomplete (an interrupted copy, download or write?); copy it again or export it again"


def check_safetensors_file(path: str | os.PathLike) -> dict[str, Any]:
    """Check that a safetensors file holds every byte its header promises, naming what is cut off.

    safetensors itself only says "incomplete metadata, file not fully covered", without the
    file or the tensors; this reads the header (8-byte little-endian length + JSON) and compares
    each tensor's ``data_offsets`` with the file size.

    Args:
        path: a ``.safetensors`` file.

    Returns:
        The header's tensor entries (name → {dtype, shape, data_offsets}).

    Raises:
        CorruptCheckpointError: naming the file and the first tensors that are cut off.
    """
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        raise CorruptCheckpointError(f"{path} is truncated: {size} bytes, too short for a safetensors header; "
                                     f"{_FILE_FIX}")
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if length > _MAX_HEADER_BYTES or 8 + length > size:
            raise CorruptCheckpointError(f"{path} is truncated: {size} bytes, but its header alone needs "
                                         f"{8 + length}; {_FILE_FIX}")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CorruptCheckpointError(f"{path} has an unreadable safetensors header ({error}); {_FILE_FIX}") \
                from error
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{path} has a safetensors header that is not a JSON object; {_FILE_FIX}")
    tensors = {name: entry for name, entry in header.items() if name != "__metadata__"}
    ends = {}
    for name, entry in tensors.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise CorruptCheckpointError(f"{path}: tensor {name!r} has bad data_offsets {offsets!r} in the "
                                         f"safetensors header; {_FILE_FIX}")
        ends[name] = 8 + length + offsets[1]
    cut = sorted((name for name, end in ends.items() if end > size), key=lambda name: ends[name])
    if cut:
        raise CorruptCheckpointError(
            f"{path} is truncated: {size} bytes, but its header needs {max(ends.values())}; tensor {cut[0]!r} is cut "
            f"off ({len(cut)} of {len(tensors)} tensors: {cut[:5]}); {_FILE_FIX}"
        )
    return tensors


_INDEX_FIX = "the index and its shards disagree (an edited or mixed-up copy?); copy the checkpoint again"


def _check_index_agrees(index: Path, files: dict[str, Path], held: dict[Path, set[str]]) -> None:
    """Every tensor the index lists is in the shard it names, and every tensor of those shards is listed (one
    left out of the index would be dropped without a word by whoever reads the index)."""
    absent = [name for name, shard in files.items() if name not in held[shard]]
    if absent:
        raise CorruptCheckpointError(f"{index.name} lists {absent[0]!r} in {files[absent[0]]}, which does not hold "
                                     f"it ({len(absent)} such tensors: {absent[:3]}); {_INDEX_FIX}")
    stored = {name: shard for shard in sorted(held, reverse=True) for name in held[shard]}  # first shard wins
    unlisted = sorted(set(stored) - set(files), key=natural_key)
    if unlisted:
        raise CorruptCheckpointError(f"{stored[unlisted[0]]} holds {unlisted[0]!r}, which {index.name} does not "
                                     f"list ({len(unlisted)} such tensors: {unlisted[:3]}); {_INDEX_FIX}")


def _weight_files(folder: Path, config: dict[str, Any]) -> dict[str, Path]:
    """Tensor name → shard path, from the sharded index or the single file (or the config's explicit file)."""
    explicit = None if has_guard(config) else config.get(GUARD_KEY)
    candidates = ([member_path(folder, explicit, listed_in=f"{folder / CONFIG_NAME} {GUARD_KEY}")] if explicit
                  else [folder / INDEX_FILE, folder / SINGLE_FILE])
    for path in candidates:
        if not path.is_file():
            continue
        if path.name.endswith(".index.json"):
            weight_map = json.loads(path.read_text()).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"{path} has no weight_map; the checkpoint index is corrupt")
            files = {name: member_path(folder, file, listed_in=f"{path} weight_map[{name!r}]")
                     for name, file in weight_map.items()}
            held: dict[Path, set[str]] = {}  # shard → the tensors its header holds
            for shard in sorted(set(files.values())):
                if not shard.is_file():
                    listed = [name for name, file in files.items() if file == shard]
                    raise CorruptCheckpointError(f"{shard} is missing; {path.name} lists it for {len(listed)} "
                                                 f"tensors, e.g. {listed[:3]}; {_FILE_FIX}")
                held[shard] = set(check_safetensors_file(shard))
            _check_index_agrees(path, files, held)
        else:
            check_safetensors_file(path)
            with safe_open(path, framework="pt") as handle:
                files = dict.fromkeys(handle.keys(), path)
        return {name: files[name] for name in sorted(files, key=natural_key)}
    raise FileNotFoundError(
        f"no safetensors weights in {folder} (looked for {', '.join(p.name for p in candidates)}); "
        "save the model with save_pretrained() (safetensors is the default) or convert its .bin files"
    )


def weight_files(folder: str | os.PathLike) -> dict[str, Path]:
    """Tensor name → shard path of a checkpoint folder; index paths must stay inside it, headers are checked."""
    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found; {folder} is not a transformers checkpoint folder")
    return _weight_files(folder, json.loads(config_path.read_text()))


class CheckpointFolder:
    """A safetensors checkpoint folder, read tensor by tensor.

    A compact folder is checked on opening (``owl_plugin.formats.integrity``): every compressed module has
    its three pieces and no dense twin, the stored tensors are exactly those the export recorded, and
    their bytes match the recorded SHA-256 checksums; index paths may not leave the folder.

    Args:
        folder: a folder with ``config.json`` and ``model.safetensors`` or a sharded index.
        verify: hash a compact folder's tensors against their checksums (default: unless
            ``OWL_VERIFY_CHECKSUMS=0``).

    Attributes:
        folder: the folder.
        config: the parsed ``config.json``.
        compressed: full names of the modules stored compressed (empty for a dense folder).
    """

    def __init__(self, folder: str | os.PathLike, *, verify: bool | None = None) -> None:
        self.folder = Path(folder)
        config_path = self.folder / CONFIG_NAME
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} not found; {self.folder} is not a transformers checkpoint folder")
        self.config: dict[str, Any] = json.loads(config_path.read_text())
        self._files = _weight_files(self.folder, self.config)
        self._handles: dict[Path, Any] = {}
        self.compressed: list[str] = (
            compressed_modules(self.config["quantization_config"]) if is_compact(self.config) else []
        )
        if self.compressed:
            check_compact_tensors(self.folder, self._files, self.config["quantization_config"], self.compressed,
                                  verify=verify)
        self._parts: dict[str, dict[str, str]] = {
            f"{module}.{WEIGHT_SUFFIX}": compressed_keys(module) for module in self.compressed
        }

    # -- stored tensors --------------------------------------------------------------------
    def _handle(self, path: Path):
        if path not in self._handles:
            self._handles[path] = safe_open(path, framework="pt")
        return self._handles[path]

    def files(self) -> list[Path]:
        """The shard files, in order."""
        return sorted(set(self._files.values()))

    def raw_names(self) -> list[str]:
        """Stored tensor names in natural order (``layers.2`` before ``layers.10``)."""
        return list(self._files)

    def read_raw(self, name: str) -> torch.Tensor:
        """One stored tensor, as saved."""
        if name not in self._files:
            raise KeyError(f"{name!r} is not stored in {self.folder}")
        return self._handle(self._files[name]).get_tensor(name)

    def raw_info(self, name: str) -> tuple[str, tuple[int, ...]]:
        """(safetensors dtype string, shape) of a stored tensor, read from the header only."""
        view = self._handle(self._files[name]).get_slice(name)
        return view.get_dtype(), tuple(view.get_shape())

    # -- logical (dense) tensors -----------------------------------------------------------
    def dense_names(self) -> list[str]:
        """Tensor names of the equivalent dense checkpoint, in stored order."""
        hidden = {key for parts in self._parts.values() for key in parts.values()}
        values_to_weight = {parts["values"]: weight for weight, parts in self._parts.items()}
        names = []
        for name in self._files:
            if name in values_to_weight:
                names.append(values_to_weight[name])
            elif name not in hidden:
                names.append(name)
        return names

    def read_dense(self, name: str) -> torch.Tensor:
        """One tensor of the equivalent dense checkpoint (decompressed when stored compressed)."""
        parts = self._parts.get(name)
        if parts is None:
            return self.read_raw(name)
        return decompress(self.read_raw(parts["values"]), self.read_raw(parts["bitmask"]),
                          self.read_raw(parts["shape"]), name=name)

    def dense_info(self, name: str) -> tuple[str, tuple[int, ...]]:
        """(safetensors dtype string, shape) of a dense tensor without reading its data."""
        parts = self._parts.get(name)
        if parts is None:
            return self.raw_info(name)
        dtype, _ = self.raw_info(parts["values"])
        return dtype, tuple(int(d) for d in self.read_raw(parts["shape"]).tolist())

    def count_zeros(self, name: str) -> tuple[int, int]:
        """(zero entries, entries) of a dense tensor: a compressed one from its headers (entries minus
        stored values), a dense one by reading it."""
        parts = self._parts.get(name)
        numel = math.prod(self.dense_info(name)[1])
        if parts is not None:
            return numel - math.prod(self.raw_info(parts["values"])[1]), numel
        return int(numel - torch.count_nonzero(self.read_raw(name))), numel

    def weights_nbytes(self) -> int:
        """Total size of the shard files on disk."""
        return sum(path.stat().st_size for path in self.files())

    def close(self) -> None:
        """Drop the open shard handles."""
        self._handles.clear()

    def __enter__(self) -> CheckpointFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
