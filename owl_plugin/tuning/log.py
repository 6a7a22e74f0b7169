"""The resumable candidate log: one JSON line per evaluated candidate, appended and flushed.

A rerun of the same search reads the log first and skips every candidate already in it,
so an interrupted ``owl tune`` resumes where it stopped. A torn last line (the process
died mid-write) is ignored and that candidate is evaluated again.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def candidate_id(method: str, params: dict[str, Any]) -> str:
    """A stable id of a candidate: the method and its parameters as sorted JSON."""
    return json.dumps({"method": method, **params}, sort_keys=True)


class CandidateLog:
    """Candidate id → record, backed by a JSONL file."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            for number, line in enumerate(self.path.read_text().splitlines(), 1):
                try:
                    record = json.loads(line)
                    self.records[record["id"]] = record
                except (json.JSONDecodeError, KeyError, TypeError):
                    logger.warning("%s:%d is not a complete record (interrupted write?); ignoring it",
                                   self.path, number)

    def __contains__(self, cid: str) -> bool:
        return cid in self.records

    def get(self, cid: str) -> dict[str, Any] | None:
        return self.records.get(cid)

    def add(self, record: dict[str, Any]) -> None:
        """Append ``record`` (which carries its ``id``) and flush it to disk."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file() and self.path.stat().st_size:
            with self.path.open("rb") as handle:  # start on a fresh line after a torn write
                handle.seek(-1, os.SEEK_END)
                torn = handle.read(1) != b"\n"
        else:
            torn = False
        with self.path.open("a") as handle:
            handle.write(("\n" if torn else "") + json.dumps(record, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.records[record["id"]] = record
