"""Text for calibration and evaluation: a local file offline, a hub dataset online.

``source`` may be
* a path to a ``.txt`` file (read as is), or a ``.json`` / ``.jsonl`` file (a list of strings,
  or records with a ``text`` field);
* ``"pydoc"``: Python's own ``pydoc_data.topics`` (always available, no download);
* a hub dataset, ``NAME[:CONFIG][@SPLIT]``, e.g. ``wikitext:wikitext-2-raw-v1@validation``
  (needs the ``datasets`` package and a network connection). A bare word (no ``/``, ``:`` or ``@``)
  that is not a file is refused rather than looked up on the Hub: it is most likely a mistyped file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

PYDOC = "pydoc"


def load_text(source: str | os.PathLike, *, column: str = "text") -> str:
    """Return the whole text of ``source`` as one string (see the module docstring)."""
    source_str = str(source)
    if source_str == PYDOC:
        from pydoc_data.topics import topics

        return "\n\n".join(topics[key] for key in sorted(topics))
    path = Path(source_str).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"text source {source_str!r} is a folder; pass a .txt/.json/.jsonl file")
    if path.exists():
        try:
            text = _read_file(path, column)
        except UnicodeDecodeError:
            raise ValueError(f"text file {source_str!r} is not UTF-8 text (a binary file?); pass a text file") from None
        if not text.strip():
            raise ValueError(f"text file {source_str!r} is empty; pass a file with text in it, or 'pydoc'")
        return text
    if path.suffix in {".txt", ".json", ".jsonl"} or source_str.startswith(("/", "./", "../", "~")):
        raise FileNotFoundError(f"text file {source_str!r} does not exist")
    if not any(mark in source_str for mark in "/:@"):  # a bare word: most likely a file name mistyped
        raise FileNotFoundError(f"text source {source_str!r} is not a file here; a hub dataset needs its full id "
                                "ORG/NAME[:CONFIG][@SPLIT] (e.g. Salesforce/wikitext:wikitext-2-raw-v1@validation); "
                                "or pass a .txt/.json/.jsonl file or 'pydoc'")
    if not _HUB_DATASET.fullmatch(source_str):
        raise ValueError(f"text source {source_str!r} is neither an existing file nor a hub dataset name "
                         "(NAME[:CONFIG][@SPLIT]); pass a .txt/.json/.jsonl file or 'pydoc'")
    return _read_hub_dataset(source_str, column)


_HUB_DATASET = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?(:[\w.-]+)?(@[\w.\[\]:%+-]+)?")


def _read_file(path: Path, column: str) -> str:
    if path.suffix in (".json", ".jsonl"):
        try:
            return _read_json(path, column)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid {path.suffix[1:].upper()} (line {error.lineno}, column "
                             f"{error.colno}: {error.msg}); fix the file or pass a .txt file") from None
    return path.read_text(encoding="utf-8")


def _read_json(path: Path, column: str) -> str:
    if path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path} is not valid JSONL (line {number}, column {error.colno}: "
                                     f"{error.msg}); fix the file or pass a .txt file") from None
    else:
        records = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(records, dict) and column in records:
            records = records[column]
        if not isinstance(records, list):
            raise ValueError(f"{path}: expected a JSON list of strings or of records with a {column!r} field")
    texts = [r if isinstance(r, str) else r.get(column) if isinstance(r, dict) else None for r in records]
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


#: ``--bos`` choices: ``auto`` follows the tokenizer, ``on`` / ``off`` force it (to reproduce a paper)
BOS_CHOICES = ("auto", "on", "off")

#: ``--bos`` help, the same on every command that builds windows
BOS_HELP = ("start every window with the BOS token: auto (default) if the tokenizer prepends it when encoding, "
            "on/off to force either (to reproduce a paper)")

#: the rule, as printed and recorded with every result
BOS_RULE = ("auto: a window starts with BOS iff the tokenizer prepends its BOS token when encoding with default "
            "settings; a BOS window is [BOS] + L-1 text tokens and only the text tokens are scored")


@dataclass(frozen=True)
class WindowProtocol:
    """How every calibration and evaluation window is built (one rule for every engine).

    ``bos_token_id`` is None for raw windows of L text tokens; otherwise every window is
    ``[BOS] + L−1`` text tokens (the model's training condition: Gemma, Llama, Mistral and OPT
    tokenizers prepend BOS, and such models park their attention sink on it).
    """

    choice: str
    bos_token_id: int | None
    tokenizer_adds_bos: bool

    @property
    def bos(self) -> bool:
        return self.bos_token_id is not None

    def as_dict(self) -> dict[str, Any]:
        return {"bos": self.bos, "bos_token_id": self.bos_token_id, "choice": self.choice,
                "tokenizer_adds_bos": self.tokenizer_adds_bos, "rule": BOS_RULE}

    def describe(self) -> str:
        how = (f"[BOS={self.bos_token_id}] + L-1 text tokens" if self.bos else "raw windows of L text tokens")
        why = {"auto": f"tokenizer {'prepends' if self.tokenizer_adds_bos else 'adds no'} BOS",
               "on": "forced by --bos on", "off": "forced by --bos off"}[self.choice]
        return f"windows: {how} (--bos {self.choice}: {why})"


def tokenizer_adds_bos(tokenizer) -> bool:
    """True if encoding a short string with default settings puts ``tokenizer.bos_token_id`` first."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("Hello world", add_special_tokens=True).input_ids
    return len(ids) > 0 and ids[0] == bos


def window_protocol(tokenizer, bos: str = "auto") -> WindowProtocol:
    """Resolve ``--bos`` (``auto`` | ``on`` | ``off``) against ``tokenizer`` (see ``BOS_RULE``)."""
    if bos not in BOS_CHOICES:
        raise ValueError(f"bos={bos!r} is not one of {', '.join(BOS_CHOICES)}")
    adds = tokenizer_adds_bos(tokenizer)
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos == "on" and bos_id is None:
        raise ValueError("--bos on: the tokenizer has no BOS token (bos_token_id is None); use --bos auto or off")
    use = adds if bos == "auto" else bos == "on"
    return WindowProtocol(choice=bos, bos_token_id=int(bos_id) if use else None, tokenizer_adds_bos=adds)


def calibration_batches(
    token_ids: torch.Tensor, *, num_samples: int = 128, seq_len: int = 512, seed: int = 0,
    bos_token_id: int | None = None,
) -> list[torch.Tensor]:
    """``num_samples`` random windows of ``seq_len`` tokens, each a (1, seq_len) tensor (Wanda/OWL style).

    With ``bos_token_id``, each window is that token followed by ``seq_len − 1`` text tokens from a
    random start; without, ``seq_len`` text tokens (the starts are drawn the same way either way).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples!r} must be >= 1")
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len!r} must be >= 2")
    span = seq_len - (bos_token_id is not None)
    if token_ids.numel() <= span:
        raise ValueError(
            f"calibration text is too short: {token_ids.numel()} tokens, need more than "
            + (f"seq_len={seq_len}" if span == seq_len else f"{span} text tokens (seq_len={seq_len} with BOS)")
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, token_ids.numel() - span, (num_samples,), generator=generator)
    windows = [token_ids[s : s + span] for s in starts.tolist()]
    if bos_token_id is not None:
        head = torch.tensor([bos_token_id], dtype=token_ids.dtype)
        windows = [torch.cat([head, w]) for w in windows]
    return [w.unsqueeze(0).clone() for w in windows]


def evaluation_windows(
    token_ids: Sequence[int] | torch.Tensor, *, seq_len: int, max_windows: int | None = None,
    bos_token_id: int | None = None,
) -> list[list[int]]:
    """The consecutive, non-overlapping evaluation windows every engine scores, as token-id lists.

    Raw: window w is ``text[w·L : (w+1)·L]``. With ``bos_token_id``: ``[BOS] + text[w·(L−1) : (w+1)·(L−1)]``.
    Either way each window has L tokens and positions 1..L−1 are the targets, so the BOS is never
    scored and perplexity is ``exp(Σ NLL / (W·(L−1)))``.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len!r} must be >= 2")
    ids = token_ids.tolist() if isinstance(token_ids, torch.Tensor) else [int(t) for t in token_ids]
    span = seq_len - (bos_token_id is not None)
    count = len(ids) // span
    if max_windows is not None:
        count = min(count, max_windows)
    if count < 1:
        raise ValueError(f"the evaluation text has {len(ids)} tokens, fewer than one window of {span} text tokens")
    head = [int(bos_token_id)] if bos_token_id is not None else []
    return [head + ids[w * span:(w + 1) * span] for w in range(count)]


def heldout_split(
    token_ids: torch.Tensor, *, fraction: float, windows: int, window_len: int, head_min: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(head, tail) of one token stream: calibrate on the head, score on the tail, never both.

    The tail is the last ``fraction`` of the tokens, or more if ``windows`` windows of
    ``window_len`` tokens need it; the head must keep more than ``head_min`` tokens (one
    calibration window). Used by ``owl tune`` (its proxy's held-out windows) and by
    ``owl prune --compare-uniform`` (the perplexity of both pruned models).
    """
    if not (0.0 < fraction < 1.0):
        raise ValueError(f"held-out fraction={fraction!r} must be in (0, 1), e.g. 0.1")
    n = token_ids.numel()
    tail = max(int(n * fraction), windows * window_len)
    if n - tail <= head_min:
        raise ValueError(
            f"calibration text has {n} tokens: too short for {windows} held-out windows of {window_len} tokens "
            f"plus calibration windows of {head_min}; use a longer text or fewer/shorter windows"
        )
    return token_ids[: n - tail], token_ids[n - tail:]
