"""What verifying a compact checkpoint's checksums adds to its load time (``owl_plugin.formats.integrity``).

    .venv/bin/python examples/benchmark_integrity.py [--compact DIR] [--sparsity 0.7] [--rounds 5]

Without ``--compact`` it magnitude-prunes the default model (SmolLM2-135M, float32, per row) into a
temporary folder and exports it compact with the project's exporter (which records the checksums).

Timed, **interleaved** (each round runs every variant once, rotating the order; the table gives the
median over rounds, after one warm-up round so every file is in the page cache, as on a second load):

* ``check, verify`` / ``check, no hashing``: ``CheckpointFolder(folder)`` with and without hashing:
  exactly what the vLLM plugin adds while vLLM builds its config, and what the transformers quantizer
  adds on top of its own per-tensor checks;
* ``from_pretrained, verify`` / ``from_pretrained, OWL_VERIFY_CHECKSUMS=0``: the whole transformers load
  (the sparse kernels packing included).

Prints a markdown table with the added seconds and the ratio against the same load without hashing.
Not a test: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from owl_plugin.checkpoint import CheckpointFolder
from owl_plugin.formats.integrity import VERIFY_ENV


def _prune_and_export(root: Path, sparsity: float) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from owl_plugin.export import export_checkpoint
    from owl_plugin.models import default_model_path

    source = default_model_path()
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and ".layers." in name:
                count = int(sparsity * module.weight.shape[1])
                module.weight.scatter_(1, module.weight.abs().argsort(dim=1)[:, :count], 0.0)
    model.save_pretrained(root / "pruned")
    AutoTokenizer.from_pretrained(source).save_pretrained(root / "pruned")
    export_checkpoint(root / "pruned", root / "compact", format="compact")
    return root / "compact"


def _with_env(value: str, func: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        old = os.environ.get(VERIFY_ENV)
        os.environ[VERIFY_ENV] = value
        try:
            return func()
        finally:
            if old is None:
                os.environ.pop(VERIFY_ENV, None)
            else:
                os.environ[VERIFY_ENV] = old
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compact", type=Path, default=None, help="a compact export (default: made from SmolLM2)")
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory(prefix="owl-integrity-") as tmp:
        folder = args.compact or _prune_and_export(Path(tmp), args.sparsity)
        weights = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
        variants = {
            "check, verify": lambda: CheckpointFolder(folder, verify=True).close(),
            "check, no hashing": lambda: CheckpointFolder(folder, verify=False).close(),
            "from_pretrained, verify": _with_env("1", lambda: AutoModelForCausalLM.from_pretrained(folder)),
            f"from_pretrained, {VERIFY_ENV}=0": _with_env("0", lambda: AutoModelForCausalLM.from_pretrained(folder)),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        names = list(variants)
        for round_ in range(args.rounds + 1):
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                started = time.perf_counter()
                variants[name]()
                if round_:  # round 0 warms the page cache
                    times[name].append(time.perf_counter() - started)
        median = {name: statistics.median(values) for name, values in times.items()}

    print(f"\ncompact checkpoint {folder}: {weights / 1e6:.1f} MB of safetensors; torch threads "
          f"{torch.get_num_threads()}, {os.cpu_count()} CPUs; median of {args.rounds} interleaved rounds\n")
    print("| load | median s | added by hashing s | ratio vs no hashing |")
    print("|---|---:|---:|---:|")
    for on, off in ((names[0], names[1]), (names[2], names[3])):
        print(f"| {off} | {median[off]:.3f} | | 1.00 |")
        print(f"| {on} | {median[on]:.3f} | {median[on] - median[off]:+.3f} | {median[on] / median[off]:.2f} |")
    hashing = median["check, verify"] - median["check, no hashing"]
    print(f"\nSHA-256 throughput while loading: {weights / 1e6 / hashing:.0f} MB/s" if hashing > 0 else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
