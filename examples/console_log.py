"""Keep the main job's console for people: stages, one progress bar per long step, results.

Everything else (llmcompressor's per-module log lines and per-layer progress bars, library
warnings, owl's own INFO lines) goes to a log file beside the results.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm.auto import tqdm


def send_logging_to(log_path: Path) -> None:
    """Python logging and llmcompressor's loguru: INFO and up to ``log_path``; the console shows only
    Python warnings and errors, and llmcompressor's errors. Call before llmcompressor is imported."""
    # llmcompressor configures its console sink from this variable when it is first imported
    os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "ERROR")
    import llmcompressor  # noqa: F401
    from loguru import logger as loguru_logger

    log_path.parent.mkdir(parents=True, exist_ok=True)
    loguru_logger.add(log_path, level="INFO", format="{time:YYYY-MM-DD HH:mm:ss} {level} llmcompressor: {message}")
    to_file = logging.FileHandler(log_path)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    to_console = logging.StreamHandler()
    to_console.setLevel(logging.WARNING)
    to_console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[to_file, to_console], force=True)
    logging.captureWarnings(True)  # library warnings (e.g. transformers' offloading notice) are log material
    warnings_logger = logging.getLogger("py.warnings")
    warnings_logger.propagate = False
    warnings_logger.addHandler(to_file)


def prunable_linear_count(model_dir: Path) -> int:
    """How many linears a prune will visit (built on the meta device: no weights are read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from owl_plugin.layers import prunable_linears

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return sum(len(group) for group in prunable_linears(model).values())


@contextmanager
def pruning_progress(log_path: Path, *, total: int, desc: str = "      pruning") -> Iterator[None]:
    """During the block, llmcompressor's output goes to ``log_path`` and the console shows one bar.

    llmcompressor logs with loguru ("Sparsifying <module> using N samples" per linear; its lines
    already go to the log, ``send_logging_to``) and draws two progress bars per layer on stderr.
    Inside the block file descriptor 2 (stderr, where the bars go) points at the log, and a single
    bar on the real console counts the linears pruned.
    """
    from loguru import logger as loguru_logger

    sys.stdout.flush()
    sys.stderr.flush()
    console = os.fdopen(os.dup(2), "w")
    saved_stderr = os.dup(2)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log_file:
        bar = tqdm(total=total, desc=desc, unit="linear", file=console, dynamic_ncols=True)

        def count(message) -> None:
            if message.record["message"].startswith("Sparsifying "):
                bar.update(1)

        counter = loguru_logger.add(count, level="INFO")
        os.dup2(log_file.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)
            loguru_logger.remove(counter)
            bar.close()
            console.close()
