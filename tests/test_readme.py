"""The README stays a user's page: at most 12 KB, and every link in it (files and #anchors) resolves."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(markdown: Path) -> set[str]:
    return {github_anchor(line.lstrip("#")) for line in markdown.read_text().splitlines() if line.startswith("#")}


def test_readme_is_at_most_12_kb() -> None:
    assert README.stat().st_size <= 12 * 1024, README.stat().st_size


def test_every_readme_link_resolves() -> None:
    broken = []
    for target in LINK.findall(README.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        file = (README.parent / path) if path else README
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(target)
    assert not broken, broken
