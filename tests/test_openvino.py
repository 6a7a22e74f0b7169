"""OpenVINO export for real: `owl export --format openvino` (core → .venv-openvino subprocess) in both
modes (``weights``, the default: int8 weights, f32 activations; ``static``: int8 weights and
activations), the int8 IR's weights read back against the profile, the export's own float-vs-int8
perplexity check, and a plain `OVModelForCausalLM.from_pretrained` compiling with the stored
properties (f32 precision everywhere; in static mode the sparse-kernel rate, whose kernels run on
CPUs with AMX).

The model is a small random Llama (hidden 256, 2 blocks) magnitude-pruned to 60 % / 70 % per block,
so the whole module takes about a minute of CPU. The int8 accuracy on the real model is what
tests/test_validate.py's full run checks (the main job's agreement checks).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from owl_plugin.paths import default_eval_text
from owl_plugin.profile import ModuleSparsity, SparsityProfile

from conftest import TEST_THREADS, run_cli

pytestmark = pytest.mark.openvino

REPO = Path(__file__).resolve().parent.parent
OV_VENV = Path(os.environ.get("OWL_OPENVINO_VENV", REPO / ".venv-openvino"))
OV_PYTHON = OV_VENV / "bin" / "python"
BLOCK_SPARSITY = (0.6, 0.7)

if not OV_PYTHON.is_file():
    pytest.skip(f"{OV_PYTHON} does not exist; `make setup-openvino` builds it (`make test` does)",
                allow_module_level=True)


def ov_run(code: str, *args: str, timeout: float = 600) -> dict:
    """Run ``code`` in the OpenVINO venv; it prints one JSON object last."""
    env = dict(os.environ, OMP_NUM_THREADS=str(TEST_THREADS), PYTHONWARNINGS="ignore", TQDM_DISABLE="1")
    done = subprocess.run([str(OV_PYTHON), "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def pruned_checkpoint(tmp_path_factory, default_model_path) -> Path:
    """A random Llama (hidden 256, intermediate 512, 2 blocks), each linear magnitude-pruned per row."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("ov-pruned")
    tokenizer = AutoTokenizer.from_pretrained(default_model_path)
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=len(BLOCK_SPARSITY),
                         num_attention_heads=4, num_key_value_heads=4, vocab_size=len(tokenizer),
                         max_position_embeddings=512)
    model = LlamaForCausalLM(config).eval()
    modules = {}
    with torch.no_grad():
        for index, (layer, sparsity) in enumerate(zip(model.model.layers, BLOCK_SPARSITY, strict=True)):
            for name, linear in layer.named_modules():
                if isinstance(linear, torch.nn.Linear):
                    weight = linear.weight
                    pruned = int(sparsity * weight.shape[1])
                    weight.scatter_(1, weight.abs().argsort(dim=1)[:, :pruned], 0.0)
                    modules[f"model.layers.{index}.{name}"] = ModuleSparsity(
                        pruned / weight.shape[1], weight.numel(), f"model.layers.{index}")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    total = sum(m.num_params for m in modules.values())
    SparsityProfile(method="uniform", target=sum(m.sparsity * m.num_params for m in modules.values()) / total,
                    modules=modules).save(folder)
    return folder


PRECISION = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}


def export(checkpoint: Path, output: Path, *args: str) -> Path:
    result = run_cli("export", str(checkpoint), "--format", "openvino", "--output", str(output), *args, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "int8 linears" in result.stdout and "perplexity int8" in result.stdout, result.stdout
    return output


@pytest.fixture(scope="module")
def exported(pruned_checkpoint, tmp_path_factory) -> Path:
    """The default export: --mode weights, no calibration text."""
    return export(pruned_checkpoint, tmp_path_factory.mktemp("ov-export") / "ir", "--check-windows", "2")


@pytest.fixture(scope="module")
def exported_static(pruned_checkpoint, tmp_path_factory) -> Path:
    # no --calibration and no calibration text in the profile: pydoc, not the WikiText-2 text the check scores
    return export(pruned_checkpoint, tmp_path_factory.mktemp("ov-export-static") / "ir", "--mode", "static",
                  "--num-samples", "4", "--seq-len", "32", "--check-windows", "2")


@pytest.fixture(params=["weights", "static"])
def any_export(request, exported, exported_static) -> Path:
    return exported if request.param == "weights" else exported_static


def test_export_writes_a_verified_int8_ir(any_export, pruned_checkpoint):
    names = {p.name for p in any_export.iterdir()}
    assert {"openvino_model.xml", "openvino_model.bin", "config.json", "owl_openvino.json",
            "sparsity_profile.json", "tokenizer.json"} <= names
    assert (any_export / "sparsity_profile.json").read_text() == \
        (pruned_checkpoint / "sparsity_profile.json").read_text()
    assert not [p for p in any_export.parent.iterdir() if p.name.startswith(".")], "staging folder left behind"
    settings = json.loads((any_export / "owl_openvino.json").read_text())
    assert settings["verification"]["int8_linears"] == 15  # 14 decoder linears + lm_head
    accuracy = settings["accuracy"]
    assert accuracy["windows"] == 2 and accuracy["seq_len"] == 512 and accuracy["compile_properties"] == \
        settings["ov_config"]
    assert accuracy["rel_gap"] == pytest.approx(accuracy["ppl_int8"] / accuracy["ppl_float"] - 1)
    if settings["mode"] == "weights":
        assert settings["ov_config"] == {**PRECISION, "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}
        assert settings["calibration"] is None and settings["quantization"]["activations"] == "float (f32)"
    else:
        assert settings["mode"] == "static"
        assert settings["ov_config"] == {**PRECISION, "CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE": "0.5"}
        assert settings["calibration"]["source"] == "pydoc" and settings["calibration"]["num_samples"] == 4
        assert "no calibration text in the profile" in settings["calibration"]["chosen_by"]


def test_static_mode_calibrates_on_the_pruning_text_apart_from_the_check_windows(pruned_checkpoint, tmp_path):
    """--mode static without --calibration uses the text the pruning calibrated on (recorded in the profile);
    when that is the text the export's check scores, the calibration windows come from after the checked tokens."""
    source = tmp_path / "pruned"
    shutil.copytree(pruned_checkpoint, source)
    profile = SparsityProfile.load(source)
    text = str(default_eval_text())
    dataclasses.replace(profile, params={**profile.params, "calibration": {"source": text}}).save(source)
    out = export(source, tmp_path / "ir", "--mode", "static", "--num-samples", "2", "--seq-len", "32",
                 "--check-windows", "1")
    calibration = json.loads((out / "owl_openvino.json").read_text())["calibration"]
    assert calibration["source"] == text and "pruning's calibration text" in calibration["chosen_by"]
    assert calibration["disjoint_from_check"] == "tokens after the first 512 (the check's)"


def test_weight_only_int8_stays_close_to_float_even_on_a_random_model(exported):
    """int8 weights only change a weight by at most half a step (max|w_row| / 254): the perplexity of
    even a random model moves by well under 1 %."""
    accuracy = json.loads((exported / "owl_openvino.json").read_text())["accuracy"]
    assert abs(accuracy["rel_gap"]) < 0.01, accuracy


def test_ir_int8_weights_keep_every_pruned_zero_and_match_the_profile(any_export, pruned_checkpoint):
    report = ov_run("""
        import json, sys
        import openvino as ov
        from safetensors.torch import load_file
        from owl_plugin.integrations.openvino.ir import int8_weights, ir_path
        ir, source = sys.argv[1:3]
        weights = load_file(source + "/model.safetensors")
        out = {}
        for module, data in int8_weights(ov.Core().read_model(ir_path(ir))):
            reference = weights.get(module + ".weight")
            if reference is None:
                continue
            zero = (reference == 0).numpy()
            out[module] = {"shape": list(data.shape), "ir_zeros": int((data == 0).sum()),
                           "revived": int((zero & (data != 0)).sum()), "source_zeros": int(zero.sum())}
        print(json.dumps(out))
    """, str(any_export), str(pruned_checkpoint))
    profile = SparsityProfile.load(pruned_checkpoint)
    assert set(profile.modules) <= set(report)  # (lm_head is int8 too, unpruned)
    for module, entry in profile.modules.items():
        got = report[module]
        numel = got["shape"][0] * got["shape"][1]
        assert got["shape"][1] == 256 or got["shape"][1] == 512, got
        assert got["revived"] == 0, f"{module}: int8 quantization made pruned weights non-zero"
        assert got["source_zeros"] == round(entry.sparsity * got["shape"][1]) * got["shape"][0]
        assert entry.sparsity <= got["ir_zeros"] / numel <= entry.sparsity + 0.02, (module, got)


def test_plain_from_pretrained_compiles_with_the_stored_properties(any_export):
    report = ov_run("""
        import json, sys
        import torch
        from optimum.intel import OVModelForCausalLM
        from owl_plugin.integrations.openvino.sparse import exec_type_counts
        model = OVModelForCausalLM.from_pretrained(sys.argv[1], ov_config={"PERF_COUNT": "YES"})
        ids = torch.arange(100, 132)[None]
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
        compiled = model.request.get_compiled_model()
        keys = ("CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE", "INFERENCE_PRECISION_HINT", "KV_CACHE_PRECISION",
                "DYNAMIC_QUANTIZATION_GROUP_SIZE")
        print(json.dumps({**{k: str(compiled.get_property(k)) for k in keys},
                          "new_tokens": out.shape[1] - ids.shape[1], "exec_types": exec_type_counts([model.request])}))
    """, str(any_export))
    assert report["new_tokens"] == 3
    # f32 whatever the CPU: the plugin's own default is bf16 where AVX512_BF16 / AMX exist
    assert report["INFERENCE_PRECISION_HINT"] == "<Type: 'float32'>" and report["KV_CACHE_PRECISION"] == \
        "<Type: 'float32'>", report
    if any_export.parent.name.startswith("ov-export-static"):
        assert float(report["CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE"]) == pytest.approx(0.5), report  # not 1.0
        assert any("I8" in kind for kind in report["exec_types"]), report  # int8 x int8 linears ran
    else:
        assert report["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == "0", report  # activations stay float
        assert not any("I8" in kind for kind in report["exec_types"]), report


AMX = "amx_int8" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else False


@pytest.mark.skipif(not AMX, reason="this CPU has no AMX: OpenVINO's sparse int8 kernels exist only for AMX")
def test_sparse_kernels_run_on_amx(exported_static):
    report = ov_run("""
        import json, sys
        import numpy as np
        from owl_plugin.integrations.openvino.engine import StatefulLM
        from owl_plugin.integrations.openvino.export import stored_ov_config
        counts = {}
        for rate in ("stored", "1"):
            config = {**stored_ov_config(sys.argv[1]), "PERF_COUNT": "YES"}
            if rate == "1":
                config["CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE"] = "1"
            model = StatefulLM(sys.argv[1] + "/openvino_model.xml", config)
            model.greedy(list(range(100, 164)), 2)
            counts[rate] = model.exec_types()
        print(json.dumps(counts))
    """, str(exported_static))
    assert any("sparse" in kind for kind in report["stored"]), report
    assert not any("sparse" in kind for kind in report["1"]), report


def test_export_errors_name_the_fix(tmp_path, pruned_checkpoint):
    env_missing = dict(os.environ, OWL_OPENVINO_VENV=str(tmp_path / "no-venv"))
    done = subprocess.run([sys.executable, "-m", "owl_plugin", "export", str(pruned_checkpoint), "--format",
                           "openvino", "--output", str(tmp_path / "out")], capture_output=True, text=True,
                          env=env_missing, timeout=120)
    assert done.returncode == 2
    assert "make setup-openvino" in done.stderr and "no-venv" in done.stderr
    assert not (tmp_path / "out").exists()

    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    done = run_cli("export", str(pruned_checkpoint), "--format", "openvino", "--output", str(existing))
    assert done.returncode == 2 and "--overwrite" in done.stderr
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]

    done = run_cli("export", str(tmp_path / "missing"), "--format", "openvino", "--output", str(tmp_path / "o2"))
    assert done.returncode == 2 and "missing' does not exist" in done.stderr, done.stderr

    done = run_cli("export", str(pruned_checkpoint), "--format", "openvino", "--output", str(tmp_path / "o3"),
                   "--calibration", "pydoc")
    assert done.returncode == 2 and "--calibration pydoc applies to --mode static" in done.stderr, done.stderr
    done = run_cli("export", str(pruned_checkpoint), "--format", "openvino", "--output", str(tmp_path / "o4"),
                   "--mode", "int4")
    assert done.returncode == 2 and "int4" in done.stderr and "weights" in done.stderr
    assert not (tmp_path / "o3").exists() and not (tmp_path / "o4").exists()
