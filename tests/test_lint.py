"""The code passes the ruff checks configured in pyproject.toml ([tool.ruff.lint])."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing() -> None:
    # ruff comes with the dev extra (make setup); a missing ruff fails here instead of skipping
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                         cwd=ROOT, capture_output=True, text=True, check=False)
    assert run.returncode == 0, f"ruff check failed:\n{run.stdout}{run.stderr}"
