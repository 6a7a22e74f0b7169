"""Check a model folder before loading it, so a bad input fails with one line naming the file.

``check_model_folder(path)``: the folder exists, ``config.json`` is a JSON object, and every
``*.safetensors`` file is whole: its header (8-byte little-endian length n, then n bytes of JSON)
parses and the largest tensor end offset fits in the file (8 + n + max(end) ≤ size). Only headers
are read, so the check costs milliseconds on any model size.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path


def looks_local(name: str) -> bool:
    """A path rather than a hub id: it exists, starts like a path, or has more than one ``/``."""
    return Path(name).exists() or name.startswith(("/", "./", "../", "~")) or name.count("/") > 1


def check_safetensors(path: Path) -> None:
    """Raise ValueError naming ``path`` if its header is unreadable or its data is truncated."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError(f"{path} is truncated ({size} bytes, no safetensors header); re-download or re-export it")
        (length,) = struct.unpack("<Q", head)
        if 8 + length > size:
            raise ValueError(f"{path} is truncated (header says {length} bytes, file has {size}); re-download it")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError(f"{path} has a corrupt safetensors header; re-download or re-export it") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} has a corrupt safetensors header; re-download or re-export it")
    ends = [entry["data_offsets"][1] for key, entry in header.items()
            if key != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry]
    if ends and 8 + length + max(ends) > size:
        raise ValueError(f"{path} is truncated ({size} bytes, its tensors need {8 + length + max(ends)}); "
                         "re-download or re-export it")


def check_model_folder(name: str | os.PathLike) -> None:
    """Raise FileNotFoundError / ValueError naming the missing or corrupt file of a local model folder.

    Hub ids (``org/name``) pass through unchanged; transformers reports those.
    """
    text = str(name)
    if not looks_local(text):
        return
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model folder {text!r} does not exist; pass a checkpoint folder, a hub id "
                                "or 'default'")
    if not path.is_dir():
        raise NotADirectoryError(f"model {text!r} is a file; pass the checkpoint folder that holds config.json")
    config = path / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{config} is missing; {text!r} is not a transformers checkpoint folder")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{config} is not valid JSON ({error}); restore it from the original checkpoint") from None
    if not isinstance(data, dict):
        raise ValueError(f"{config} holds a {type(data).__name__}, not a JSON object; restore it")
    for weights in sorted(path.glob("*.safetensors")):
        check_safetensors(weights)
