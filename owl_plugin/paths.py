"""Where the project's shared data lives (the WikiText-2 validation text)."""

from __future__ import annotations

import os
from pathlib import Path

WIKITEXT_FILENAME = "wikitext2-valid.tokens.txt"


def default_eval_text() -> Path:
    """WikiText-2 validation: ``$OWL_EVAL_TEXT``, else ``shared/data/`` next to the checkout."""
    if "OWL_EVAL_TEXT" in os.environ:
        return Path(os.environ["OWL_EVAL_TEXT"])
    here = Path(__file__).resolve().parent
    candidates = [parent / "shared" / "data" / WIKITEXT_FILENAME for parent in (here.parent.parent, here.parent)]
    candidates.append(Path.cwd().parent / "shared" / "data" / WIKITEXT_FILENAME)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{WIKITEXT_FILENAME} not found next to the checkout (../shared/data/); set OWL_EVAL_TEXT or pass --text"
    )
