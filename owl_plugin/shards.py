"""Write tensors into safetensors shards as they stream in, holding at most one shard in memory.

Shards are written under provisional names and get their transformers names
(``model.safetensors``, or ``model-0000i-of-0000N.safetensors`` plus
``model.safetensors.index.json``) in ``finish()``, once their number is known.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from owl_plugin.checkpoint import INDEX_FILE, SINGLE_FILE

DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3


def fsync_file(path: Path) -> None:
    """Flush a written file to disk."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


class ShardWriter:
    """Accumulate tensors and write a shard whenever the next tensor would overflow it.

    Args:
        folder: where the shards go (an empty staging folder).
        max_shard_bytes: shard size limit; a single larger tensor gets a shard of its own.
    """

    def __init__(self, folder: Path, *, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
        if max_shard_bytes <= 0:
            raise ValueError(f"max_shard_bytes={max_shard_bytes!r} must be positive")
        self.folder = folder
        self.max_shard_bytes = max_shard_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self._seen: set[str] = set()
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queue one tensor (written when its shard is full or at ``finish()``)."""
        if name in self._seen:
            raise ValueError(f"tensor {name!r} was written twice")
        self._seen.add(name)
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        self._pending[name] = tensor.contiguous()
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        path = self.folder / f".shard-{len(self._shards) + 1:05d}.part"
        save_file(self._pending, str(path), metadata={"format": "pt"})
        fsync_file(path)
        self._shards.append((path, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def finish(self) -> dict[str, str]:
        """Write the last shard, give every shard its final name and write the index if sharded.

        Returns:
            Tensor name → shard file name.
        """
        if self._pending or not self._shards:
            self._flush()
        count = len(self._shards)
        weight_map: dict[str, str] = {}
        for number, (path, names) in enumerate(self._shards, start=1):
            final = SINGLE_FILE if count == 1 else f"model-{number:05d}-of-{count:05d}.safetensors"
            path.rename(self.folder / final)
            weight_map.update(dict.fromkeys(names, final))
        if count > 1:
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
            (self.folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
            fsync_file(self.folder / INDEX_FILE)
        return weight_map
