"""Integrity of a compact (owl_sparse) checkpoint: per-tensor checksums, completeness, safe paths.

A compact export records the SHA-256 of every stored tensor's bytes (exactly the bytes between
its safetensors ``data_offsets``) in ``config.json``::

    "quantization_config": {..., "checksums": {"algorithm": "sha256", "tensors": {name: hex, ...}}}

The loaders (``owl_plugin.checkpoint.CheckpointFolder``, the transformers quantizer and the vLLM
quantization config) refuse, naming the file and the tensor:

- a tensor whose bytes no longer hash to its checksum (e.g. two mask bits swapped: the popcount,
  so every SPEC.md invariant, still holds, but the weights are wrong);
- a tensor the checksums list that is not stored (a deleted norm, embedding or compressed piece);
- a stored tensor the checksums do not list, and in particular a dense ``<module>.weight`` beside the
  compressed pieces of the same module (a "dense twin": engines would load it instead of them), and
  compressed pieces of a module that ``compressed_modules`` does not list;
- a shard path in the index (``weight_map``) or in ``transformers_weights`` that leaves the
  checkpoint folder (``../x``, ``/abs/x``).

Hashing reads every weight byte once more (from the page cache right after, or before, the engine
reads it); SHA-256 runs at ~1-2 GB/s per core and the tensors are hashed on up to 4 threads
(hashlib releases the GIL). ``OWL_VERIFY_CHECKSUMS=0`` skips the hashing only; the cheap
completeness, dense-twin and path checks always run. A compact checkpoint exported before
checksums existed loads with a warning (nothing to verify against).
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from owl_plugin.formats.compact import WEIGHT_SUFFIX, CompactFormatError, check_compressed, compressed_keys

logger = logging.getLogger(__name__)

CHECKSUMS_KEY = "checksums"  # in quantization_config
ALGORITHM = "sha256"
VERIFY_ENV = "OWL_VERIFY_CHECKSUMS"
_THREADS = 4
_FIX = "export the checkpoint again with `owl export MODEL --format compact` (or copy it again)"


class ChecksumError(CompactFormatError):
    """A stored tensor's bytes differ from the checksum its export recorded."""


class CheckpointPathError(ValueError):
    """A checkpoint index or config names a weights file outside the checkpoint folder."""


def verify_requested() -> bool:
    """False when ``OWL_VERIFY_CHECKSUMS`` is ``0``/``false``/``no``/``off`` (case and spaces ignored)."""
    return os.environ.get(VERIFY_ENV, "").strip().lower() not in ("0", "false", "no", "off")


def member_path(folder: str | os.PathLike, name: Any, *, listed_in: str) -> Path:
    """``folder / name`` for a file name read from a checkpoint's metadata, refusing names that leave the folder.

    Checked on the name itself (not on resolved links: a Hub cache snapshot links every file into its blobs
    folder, which is fine): absolute paths, drive letters, ``..`` components and empty names are refused.

    Args:
        folder: the checkpoint folder.
        name: the file name as written in the metadata.
        listed_in: where the name was read, e.g. ``".../model.safetensors.index.json weight_map"``.

    Raises:
        CheckpointPathError: naming the bad value and where it was read.
    """
    if not isinstance(name, str) or not name.strip():
        raise CheckpointPathError(f"{listed_in} names the weights file {name!r}; expected a file name inside "
                                  f"{folder}")
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in posix.parts or ".." in windows.parts:
        raise CheckpointPathError(f"{listed_in} names the weights file {name!r}, which is outside the checkpoint "
                                  f"folder {folder}; a checkpoint may only read its own files (edited index or "
                                  "config? export or download it again)")
    return Path(folder) / name


def _header(path: Path) -> tuple[int, dict[str, Any]]:
    """(bytes before the data, tensor name → header entry) of a safetensors file."""
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length))
    return 8 + length, {name: entry for name, entry in header.items() if name != "__metadata__"}


def file_checksums(path: str | os.PathLike, names: Iterable[str] | None = None) -> dict[str, str]:
    """SHA-256 (hex) of the stored bytes of every tensor (or of ``names``) in one safetensors file.

    The file is memory-mapped and each tensor's byte range hashed in place (no tensor is built).
    """
    path = Path(path)
    start, entries = _header(path)
    wanted = list(entries) if names is None else list(names)
    if not wanted:
        return {}
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)
        try:
            def digest(name: str) -> str:
                begin, end = entries[name]["data_offsets"]
                return hashlib.new(ALGORITHM, view[start + begin:start + end]).hexdigest()

            with ThreadPoolExecutor(max_workers=min(_THREADS, len(wanted))) as pool:
                hashes = dict(zip(wanted, pool.map(digest, wanted), strict=True))
        finally:
            view.release()
    return hashes


def checkpoint_checksums(files: Mapping[str, Path]) -> dict[str, str]:
    """Tensor name → SHA-256 of its stored bytes, for a checkpoint's ``name → shard`` map (in its order)."""
    by_file: dict[Path, list[str]] = {}
    for name, path in files.items():
        by_file.setdefault(path, []).append(name)
    hashes: dict[str, str] = {}
    for path, names in by_file.items():
        hashes.update(file_checksums(path, names))
    return {name: hashes[name] for name in files}


def checksums_entry(files: Mapping[str, Path]) -> dict[str, Any]:
    """The ``quantization_config["checksums"]`` value for the tensors in ``files``."""
    return {"algorithm": ALGORITHM, "tensors": checkpoint_checksums(files)}


def recorded_checksums(quant: Mapping[str, Any], *, config_path: str) -> dict[str, str] | None:
    """The ``name → hex`` checksums recorded in ``quantization_config``, or None for an older export.

    Raises:
        CompactFormatError: a malformed ``checksums`` entry or another algorithm.
    """
    entry = quant.get(CHECKSUMS_KEY)
    if entry is None:
        return None
    tensors = entry.get("tensors") if isinstance(entry, Mapping) else None
    if not isinstance(tensors, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in tensors.items()):
        raise CompactFormatError(f"{config_path}: quantization_config.checksums must be "
                                 f"{{'algorithm': 'sha256', 'tensors': {{name: hex}}}}; {_FIX}")
    if entry.get("algorithm") != ALGORITHM:
        raise CompactFormatError(f"{config_path}: checksum algorithm {entry.get('algorithm')!r} is not supported "
                                 f"(expected {ALGORITHM!r}); upgrade owl-plugin or {_FIX}")
    return dict(tensors)


def check_compact_tensors(
    folder: str | os.PathLike,
    files: Mapping[str, Path],
    quant: Mapping[str, Any],
    modules: Iterable[str],
    *,
    verify: bool | None = None,
) -> None:
    """Refuse a compact checkpoint whose stored tensors are incomplete, doubled or altered.

    Args:
        folder: the checkpoint folder (for messages).
        files: every stored tensor name → its safetensors file.
        quant: config.json's ``quantization_config``.
        modules: its ``compressed_modules``.
        verify: hash the tensors and compare with the recorded checksums (default: unless
            ``OWL_VERIFY_CHECKSUMS=0``).

    Raises:
        CompactFormatError: a compressed module lacks a piece or has a dense twin, a listed tensor is missing,
            an unlisted one is stored; ``ChecksumError`` when bytes differ. Each names the tensor and file.
    """
    config_path = str(Path(folder) / "config.json")
    modules = list(modules)
    pieces = {key for module in modules for key in compressed_keys(module).values()}
    suffixes = tuple(f".{key.rpartition('.')[2]}" for key in compressed_keys("m").values())
    orphans = [name for name in files if name.endswith(suffixes) and name not in pieces]
    if orphans:
        raise CompactFormatError(f"{orphans[0]} in {files[orphans[0]]} is a compressed piece of a module that "
                                 f"{config_path} does not list in quantization_config.compressed_modules "
                                 f"({len(orphans)} such tensors); the checkpoint is inconsistent, {_FIX}")
    for module in modules:
        keys = compressed_keys(module)
        missing = [key.rpartition(".")[2] for key in keys.values() if key not in files]
        if missing:
            raise CompactFormatError(f"{module}.{WEIGHT_SUFFIX}: {folder} lacks {missing} (compressed_modules lists "
                                     f"{module}); the compact checkpoint is incomplete, {_FIX}")
        twin = f"{module}.{WEIGHT_SUFFIX}"
        if twin in files:
            raise CompactFormatError(f"{twin} is stored dense in {files[twin]} although {module} is stored "
                                     f"compressed ({keys['values']}, ...); engines would load one of the two "
                                     f"silently, so the checkpoint is refused; {_FIX}")
    recorded = recorded_checksums(quant, config_path=config_path)
    if recorded is None:
        logger.warning("%s records no tensor checksums (exported by an older owl-plugin); its weights cannot be "
                       "verified. Export it again to add them", config_path)
        return
    absent = [name for name in recorded if name not in files]
    if absent:
        raise CompactFormatError(f"{absent[0]} is missing from {folder} ({len(absent)} listed tensors missing: "
                                 f"{absent[:5]}), but {config_path} records its checksum; the checkpoint is "
                                 f"incomplete, {_FIX}")
    extra = [name for name in files if name not in recorded]
    if extra:
        raise CompactFormatError(f"{extra[0]} in {files[extra[0]]} is not one of the tensors exported into {folder} "
                                 f"({len(extra)} unlisted: {extra[:5]}); the checkpoint was altered, {_FIX}")
    if not (verify_requested() if verify is None else verify):
        return
    found = checkpoint_checksums(files)
    wrong = [name for name in files if found[name] != recorded[name]]
    if wrong:
        _check_invariants(wrong[0], files, modules)  # a broken SPEC.md invariant is the more telling error
        raise ChecksumError(f"{wrong[0]} in {files[wrong[0]]}: its bytes do not match the SHA-256 recorded in "
                            f"{config_path} ({len(wrong)} tensors differ: {wrong[:5]}); the weights changed after "
                            f"export (a bad copy or an edit), {_FIX}; {VERIFY_ENV}=0 skips this check")


def _check_invariants(name: str, files: Mapping[str, Path], modules: Iterable[str]) -> None:
    """Raise SPEC.md's own error when ``name`` is a piece of a compressed module that breaks an invariant."""
    from safetensors import safe_open

    module = next((m for m in modules if name in compressed_keys(m).values()), None)
    if module is None:
        return
    parts = {}
    for part, key in compressed_keys(module).items():
        with safe_open(files[key], framework="pt") as handle:
            parts[part] = handle.get_tensor(key)
    check_compressed(parts["values"].dtype, tuple(parts["values"].shape), parts["bitmask"], parts["shape"],
                     name=f"{module}.{WEIGHT_SUFFIX}")
