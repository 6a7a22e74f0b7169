"""The README stays a user's page: at most 12 KB, every link in it (files and #anchors) resolves, and the counts
it states are the tests'."""

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


def test_readme_counts_every_bad_input_case() -> None:
    """The README's "(N cases, tests/test_bad_inputs.py)" is the length of that file's CASES table."""
    import ast

    tree = ast.parse((ROOT / "tests" / "test_bad_inputs.py").read_text())
    table = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                 and any(getattr(target, "id", None) == "CASES" for target in node.targets))
    stated = re.search(r"\((\d+) cases,\s*\[tests/test_bad_inputs\.py\]", README.read_text())
    assert stated, "the README no longer states the bad-input case count"
    assert int(stated.group(1)) == len(table.elts)
