"""``examples/benchmark_kernels.py`` runs end to end on a tiny shape and writes the table, the JSON rows and the
plot it promises, in the venv the tests run in (vLLM is not importable there: the torch baseline only)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from owl_plugin.kernels import kernel_info

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "examples" / "benchmark_kernels.py"


@pytest.mark.skipif(kernel_info()["extension"] is None, reason="the C++ extension is not built on this machine")
def test_tiny_shape_gives_rows_for_every_batch_and_the_best_speedup_line(tmp_path: Path) -> None:
    out = tmp_path / "kernels"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--shapes", "96x200", "--batches", "1", "17", "130", "--dtypes", "bfloat16",
         "float32", "--rounds", "1", "--calls", "1", "--stream-mb", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.rstrip().splitlines()[-1].startswith("best speed-up: ")
    data = json.loads(out.with_suffix(".json").read_text())
    assert [(r["dtype"], r["batch"]) for r in data["rows"]] == [
        (d, b) for d in ("bfloat16", "float32") for b in (1, 17, 130)]
    for r in data["rows"]:
        assert r["dense_us"] > 0 and r["sparse_us"] > 0 and r["tiled_us"] > 0
        assert "vllm_us" not in r and r["best_dense"] == "torch"
    assert out.with_suffix(".md").read_text().count("| 96x200 |") == 6
    assert "python examples/benchmark_kernels.py --shapes" in out.with_suffix(".md").read_text()  # rerunnable
    assert out.with_suffix(".png").stat().st_size > 0
