"""``examples/benchmark_serving.py`` runs end to end (``--quick``: a 4-layer random Llama, transformers engine) in both
of its modes, one worker process per checkpoint and ``--same-process``, and reports what its docstring promises:
every case timed for both checkpoints, the compact model on the sparse kernel with fewer weight bytes, and RSS rows
only where a process holds one model."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "examples" / "benchmark_serving.py"
_SPEC = importlib.util.spec_from_file_location("benchmark_serving", SCRIPT)
_SCRIPT_MODULE = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_SCRIPT_MODULE)  # top level: constants and stdlib imports only
QUICK_LAYERS = _SCRIPT_MODULE.LLAMA_QUICK["num_hidden_layers"]  # 7 linears each


def _run(workdir: Path, *extra: str) -> tuple[str, dict]:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--models", "llama1b", "--engines", "transformers",
         "--rounds", "1", "--batches", "1", "4", "--workdir", str(workdir), *extra],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    results = json.loads((workdir.with_name(workdir.name + "-quick") / "results.json").read_text())
    return result.stdout, results["llama1b"]["transformers"]


@pytest.mark.parametrize("same_process", [False, True], ids=["process-per-checkpoint", "same-process"])
def test_quick_run_times_both_checkpoints_and_reports_memory(tmp_path_factory, same_process: bool) -> None:
    workdir = tmp_path_factory.getbasetemp() / "serving"  # shared: the second run reuses the checkpoints
    stdout, res = _run(workdir, *(["--same-process"] if same_process else []))
    assert set(res["cases"]) == {"decode b1", "decode b4", "prefill"}
    for row in res["cases"].values():
        assert row["dense"] > 0 and row["compact"] > 0 and row["ratio"] > 0
    dense, compact = res["info"]["dense"], res["info"]["compact"]
    assert compact["packed_layers"] == 7 * QUICK_LAYERS and dense["packed_layers"] == 0
    assert compact["kernel"]["op"] == "owl::sparse_linear"
    assert compact["packed_bytes"] < 0.45 * compact["packed_dense_bytes"]  # 70%: values + bitmask
    # the dense model holds its parameters in bf16 (plus small buffers: rotary frequencies)
    assert res["model_bf16_bytes"] <= dense["weight_bytes"] < 1.001 * res["model_bf16_bytes"]
    assert compact["weight_bytes"] < dense["weight_bytes"]
    header = "Both checkpoints in one worker process" if same_process else "One worker process per checkpoint"
    assert header in stdout
    if same_process:  # one process holds both: no per-model RSS
        assert compact["rss_bytes"] is None and "process RSS" not in stdout
    else:
        assert compact["rss_bytes"] > 0 and dense["rss_bytes"] > 0 and "process RSS after loading" in stdout


def test_same_process_refuses_the_server_engine() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--engines", "vllm-serve", "--same-process"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--same-process with --engines vllm-serve" in result.stderr
