"""Text for calibration and evaluation: a local file offline, a hub dataset online.

``source`` may be
* a path to a ``.txt`` file (read as is), or a ``.json`` / ``.jsonl`` file (a list of strings,
  or records with a ``text`` field);
* ``"pydoc"``: Python's own ``pydoc_data.topics`` (always available, no download);
* a hub dataset, ``NAME[:CONFIG][@SPLIT]``, e.g. ``wikitext:wikitext-2-raw-v1@validation``
  (needs the ``datasets`` package and a network connection).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

PYDOC = "pydoc"


def load_text(source: str | os.PathLike, *, column: str = "text") -> str:
    """Return the whole text of ``source`` as one string (see the module docstring)."""
    source_str = str(source)
    if source_str == PYDOC:
        from pydoc_data.topics import topics

        return "\n\n".join(topics[key] for key in sorted(topics))
    path = Path(source_str).expanduser()
    if path.exists():
        return _read_file(path, column)
    if path.suffix in {".txt", ".json", ".jsonl"}:
        raise FileNotFoundError(f"text file {source_str!r} does not exist")
    return _read_hub_dataset(source_str, column)


def _read_file(path: Path, column: str) -> str:
    if path.suffix == ".jsonl":
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    elif path.suffix == ".json":
        records = json.loads(path.read_text())
        if isinstance(records, dict) and column in records:
            records = records[column]
        if not isinstance(records, list):
            raise ValueError(f"{path}: expected a JSON list of strings or of records with a {column!r} field")
    else:
        return path.read_text(encoding="utf-8")
    texts = [r if isinstance(r, str) else r.get(column) for r in records]
    if any(not isinstance(t, str) for t in texts):
        raise ValueError(f"{path}: every record must be a string or have a string {column!r} field")
    return "\n\n".join(texts)


def _read_hub_dataset(spec: str, column: str) -> str:
    name, _, split = spec.partition("@")
    name, _, config = name.partition(":")
    try:
        import datasets
    except ImportError as error:
        raise ValueError(
            f"{spec!r} is not a local file, and reading hub datasets needs `pip install datasets`"
        ) from error
    try:
        data = datasets.load_dataset(name, config or None, split=split or "train")
    except Exception as error:  # offline, unknown name, ...
        raise ValueError(
            f"{spec!r} is not a local file and could not be loaded as a hub dataset ({type(error).__name__}: {error}); "
            "offline, pass a local .txt/.json file or 'pydoc' instead"
        ) from error
    return "\n\n".join(t for t in data[column] if t)


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """Token ids of ``text`` as a 1-D LongTensor (no special tokens)."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    if ids.numel() == 0:
        raise ValueError("the text is empty after tokenization")
    return ids


def calibration_batches(
    token_ids: torch.Tensor, *, num_samples: int = 128, seq_len: int = 512, seed: int = 0
) -> list[torch.Tensor]:
    """``num_samples`` random windows of ``seq_len`` tokens, each a (1, seq_len) tensor (Wanda/OWL style)."""
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples!r} must be >= 1")
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len!r} must be >= 2")
    if token_ids.numel() <= seq_len:
        raise ValueError(
            f"calibration text is too short: {token_ids.numel()} tokens, need more than seq_len={seq_len}"
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, token_ids.numel() - seq_len, (num_samples,), generator=generator)
    return [token_ids[s : s + seq_len].unsqueeze(0).clone() for s in starts.tolist()]
