"""The resumable candidate log: one JSON line per evaluated candidate, appended and flushed.

A rerun of the same search reads the log first and skips every candidate already in it,
so an interrupted ``owl tune`` resumes where it stopped. The log is a cache, never trusted:
each record carries ``digest``, the sha256 of its canonical JSON without that field, and must
have the required keys with the right types and finite scores. A torn last line (the process
died mid-write), a record whose digest does not match (an edited score), one that fails the
schema, or one written before records carried a digest is reported with its file and line,
dropped from the log, and that candidate is evaluated again. A write that fails (a full disk:
``OSError(ENOSPC)`` naming the log) is cut off again, so no half record stays behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from owl_plugin.staging import disk_full, full_disk_error

logger = logging.getLogger(__name__)

DIGEST = "digest"
# key -> accepted types; "kl"/"ppl" must also be finite numbers (ppl may overflow to +inf: allowed, never NaN)
REQUIRED: dict[str, tuple[type, ...]] = {"id": (str,), "kl": (int, float), "ppl": (int, float)}
OPTIONAL: dict[str, tuple[type, ...]] = {
    "method": (str,), "params": (dict,), "target": (int, float), "seconds": (int, float), "projected": (bool,),
    "blocks": (list,), "history": (list,), "accepted": (bool,),
}


def candidate_id(method: str, params: dict[str, Any]) -> str:
    """A stable id of a candidate: the method and its parameters as sorted JSON."""
    return json.dumps({"method": method, **params}, sort_keys=True)


def record_digest(record: dict[str, Any]) -> str:
    """sha256 of ``record``'s canonical JSON (sorted keys, no ``digest`` field)."""
    body = {k: v for k, v in record.items() if k != DIGEST}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def schema_problem(record: Any) -> str | None:
    """Why ``record`` is not a usable log record (None when it is)."""
    if not isinstance(record, dict):
        return f"not a JSON object but {type(record).__name__}"
    for key, types in {**REQUIRED, **OPTIONAL}.items():
        if key not in record:
            if key in REQUIRED:
                return f"missing key {key!r}"
            continue
        value = record[key]
        numeric = types == (int, float)
        if (numeric and not _number(value)) or (not numeric and not isinstance(value, types)):
            return f"{key!r} is {type(value).__name__}, not {'/'.join(t.__name__ for t in types)}"
    if not math.isfinite(record["kl"]) or record["kl"] < 0:
        return f"'kl' is {record['kl']!r}, not a finite number >= 0"
    if math.isnan(record["ppl"]) or record["ppl"] <= 0:
        return f"'ppl' is {record['ppl']!r}, not a number > 0"
    for key in ("blocks", "history"):
        if key in record and not all(_number(x) and math.isfinite(x) for x in record[key]):
            return f"{key!r} holds a value that is not a finite number"
    return None


class CandidateLog:
    """Candidate id → record (without its digest), backed by a JSONL file."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        self.rejected = 0  # lines dropped on reading (reported in a warning each)
        try:
            data = self.path.read_bytes() if self.path.is_file() else b""
        except OSError as error:
            logger.warning("cannot read the tune log %s (%s); its candidates are evaluated again", self.path, error)
            return
        kept: list[bytes] = []
        for number, line in enumerate(data.splitlines(), 1):
            if not line.strip():
                continue
            problem = self._problem(line)
            if problem is None:
                record = json.loads(line)
                del record[DIGEST]
                self.records[record["id"]] = record
                kept.append(line)
            else:
                self.rejected += 1
                logger.warning("%s:%d %s; the record is dropped and its candidate evaluated again",
                               self.path, number, problem)
        if self.rejected:
            self._rewrite(kept)

    @staticmethod
    def _problem(line: bytes) -> str | None:
        try:
            record = json.loads(line.decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "is not a complete JSON record (interrupted write or damage)"
        problem = schema_problem(record)
        if problem is not None:
            return f"is not a valid record: {problem}"
        if DIGEST not in record:
            return "has no digest (written by an older owl-plugin), so its score is not trusted"
        if record[DIGEST] != record_digest(record):
            return "does not match its digest (edited or damaged), so its score is not trusted"
        return None

    def _rewrite(self, lines: list[bytes]) -> None:
        """Replace the log by its valid lines (atomically); a failure only leaves the warnings to repeat."""
        try:
            handle, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
            with os.fdopen(handle, "wb") as out:
                out.write(b"".join(line + b"\n" for line in lines))
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except OSError as error:
            logger.warning("could not rewrite %s without its bad records: %s", self.path, error)

    def __contains__(self, cid: str) -> bool:
        return cid in self.records

    def get(self, cid: str) -> dict[str, Any] | None:
        return self.records.get(cid)

    def add(self, record: dict[str, Any]) -> None:
        """Append ``record`` (which carries its ``id``) with its digest and flush it to disk."""
        record = {k: v for k, v in record.items() if k != DIGEST}
        line = json.dumps({**record, DIGEST: record_digest(record)}, sort_keys=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file() and self.path.stat().st_size:
            with self.path.open("rb") as handle:  # start on a fresh line after a torn write
                handle.seek(-1, os.SEEK_END)
                torn = handle.read(1) != b"\n"
        else:
            torn = False
        size = self.path.stat().st_size if self.path.is_file() else 0
        try:
            with self.path.open("a") as handle:
                handle.write(("\n" if torn else "") + line + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        except Exception as error:
            try:  # leave no half-written record behind (e.g. a full disk)
                os.truncate(self.path, size)
            except OSError:
                pass
            if disk_full(error):
                raise full_disk_error(self.path) from error
            raise
        self.records[record["id"]] = record
