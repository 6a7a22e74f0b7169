"""Nothing leaks (issue 20): an export copies only known side files, OpenVINO applies only the compile
properties owl writes and only from the IR folder being loaded, and `owl validate --serve` talks to its own
server (random API key, no proxy, port bound without a choose-then-bind race)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from compact_helpers import tiny_llama

from owl_plugin.cli import main
from owl_plugin.export import export_checkpoint, is_known_side_file

KNOWN = ("generation_config.json", "tokenizer_config.json", "tokenizer.json", "special_tokens_map.json",
         "chat_template.jinja", "LICENSE", "LICENSE.txt", "NOTICE.md", "recipe.yaml")
UNKNOWN = ("credentials.env", "notes.txt", "train.py", "wandb-key", "my_tokenizer_backup.json")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tiny_llama(tmp_path_factory.mktemp("leaks") / "source", dtype=torch.bfloat16)
    for name in KNOWN + UNKNOWN:
        if not (folder / name).exists():
            (folder / name).write_text(f"{name}\n")
    return folder


def test_known_side_file_names() -> None:
    for name in KNOWN + ("README.md", "sparsity_profile.json", "sparsity_profile.png", "results.json", "vocab.json",
                         "merges.txt", "tokenizer.model", "COPYING", "USE_POLICY.md"):
        assert is_known_side_file(name), name
    for name in UNKNOWN + (".env", "LICENSE.sh", "README.py", "config.yaml"):
        assert not is_known_side_file(name), name


def test_export_copies_only_known_side_files_and_lists_the_rest(source, tmp_path, capsys) -> None:
    result = export_checkpoint(source, tmp_path / "plain", format="compact")
    copied = {p.name for p in (tmp_path / "plain").iterdir()}
    assert set(KNOWN) <= copied
    assert not set(UNKNOWN) & copied
    assert result.skipped == tuple(sorted(UNKNOWN))
    assert ("not copied (unknown side files, --include NAME copies one): "
            + ", ".join(sorted(UNKNOWN))) in result.summary()
    card = (tmp_path / "plain" / "README.md").read_text()
    assert "credentials.env" not in card  # the card's file list shows what is in the folder, nothing else

    assert main(["export", str(source), "--format", "dense", "-o", str(tmp_path / "more"),
                 "--include", "notes.txt", "--include", "train.py"]) == 0
    out = capsys.readouterr().out
    copied = {p.name for p in (tmp_path / "more").iterdir()}
    assert {"notes.txt", "train.py"} <= copied and "credentials.env" not in copied
    assert "not copied (unknown side files, --include NAME copies one): credentials.env, my_tokenizer_backup.json, " \
           "wandb-key" in out


@pytest.mark.parametrize(("name", "message"), [
    ("missing.txt", "--include 'missing.txt': {source}/missing.txt is not a regular file in the source folder"),
    ("../secrets.env", "--include '../secrets.env' is not a file name; name one file of {source} (no folders)"),
    ("/etc/passwd", "--include '/etc/passwd' is not a file name"),
    ("model.safetensors", "--include 'model.safetensors' is a config or weight file"),
])
def test_bad_include_is_refused_before_any_output(source, tmp_path, capsys, name, message) -> None:
    assert main(["export", str(source), "--format", "dense", "-o", str(tmp_path / "out"), "--include", name]) == 2
    assert message.format(source=source) in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# -- OpenVINO: compile properties ----------------------------------------------------------------------
def _settings(folder: Path, ov_config: dict) -> Path:
    from owl_plugin.integrations.openvino.export import SETTINGS_FORMAT, SETTINGS_NAME

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "openvino_model.xml").write_text("<net/>")
    (folder / SETTINGS_NAME).write_text(json.dumps({"format": SETTINGS_FORMAT, "ov_config": ov_config}))
    return folder


def test_openvino_applies_only_the_properties_owl_writes(tmp_path) -> None:
    from owl_plugin.integrations.openvino.export import stored_ov_config
    from owl_plugin.integrations.openvino.modes import STATIC, WEIGHTS, compile_properties

    for mode in (WEIGHTS, STATIC):  # what the export writes is accepted as written
        written = compile_properties(mode, 0.5)
        assert stored_ov_config(_settings(tmp_path / mode.name, written)) == written
    for bad, message in [
        ({"CACHE_DIR": "/tmp/x"}, "'CACHE_DIR' is not a compile property owl-plugin writes"),
        ({"INFERENCE_PRECISION_HINT": "f32", "ENABLE_MMAP": "NO"}, "'ENABLE_MMAP' is not a compile property"),
        ({"INFERENCE_PRECISION_HINT": "u1"}, "INFERENCE_PRECISION_HINT='u1' is not f32, bf16 or f16"),
        ({"CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE": "7"}, "CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE='7'"),
        ({"DYNAMIC_QUANTIZATION_GROUP_SIZE": "-1"}, "DYNAMIC_QUANTIZATION_GROUP_SIZE='-1'"),
        ([["INFERENCE_PRECISION_HINT", "f32"]], "ov_config must be an object"),
    ]:
        folder = _settings(tmp_path / "bad", bad)
        with pytest.raises(ValueError, match="owl_openvino.json") as error:
            stored_ov_config(folder)
        assert message in str(error.value)


def test_openvino_reads_settings_only_from_an_ir_folder(tmp_path) -> None:
    from owl_plugin.integrations.openvino.export import SETTINGS_NAME, stored_ov_config

    folder = _settings(tmp_path / "ir", {"INFERENCE_PRECISION_HINT": "f32"})
    (folder / "openvino_model.xml").unlink()  # not an IR folder: its settings are not read
    assert stored_ov_config(folder) == {}
    outside = _settings(tmp_path / "other", {"INFERENCE_PRECISION_HINT": "f32"})
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "openvino_model.xml").write_text("<net/>")
    (linked / SETTINGS_NAME).symlink_to(outside / SETTINGS_NAME)  # settings from another folder: refused
    with pytest.raises(ValueError, match="is a symbolic link"):
        stored_ov_config(linked)


def test_openvino_from_pretrained_hook_refuses_a_hostile_folder(tmp_path) -> None:
    """The start-up hook in the OpenVINO venv (real optimum-intel): a folder whose owl_openvino.json sets a
    property owl never writes is refused by name before anything is compiled; the refusal reads the folder
    given by model_id + subfolder, and a folder next to it is never consulted."""
    import os
    import subprocess
    import textwrap

    python = Path(os.environ.get("OWL_OPENVINO_VENV", Path(__file__).parent.parent / ".venv-openvino")) / "bin/python"
    if not python.is_file():
        pytest.skip(f"{python} does not exist; `make setup-openvino` builds it")
    hostile = _settings(tmp_path / "repo" / "ir", {"INFERENCE_PRECISION_HINT": "f32", "CACHE_DIR": str(tmp_path)})
    code = textwrap.dedent("""
        import sys
        from optimum.intel import OVModelForCausalLM
        for args, kwargs in (((sys.argv[1],), {"subfolder": "ir"}), ((sys.argv[1] + "/ir",), {})):
            try:
                OVModelForCausalLM.from_pretrained(*args, **kwargs)
            except ValueError as error:
                print("REFUSED", error)
            else:
                print("LOADED")
    """)
    done = subprocess.run([str(python), "-c", code, str(hostile.parent)], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    lines = [line for line in done.stdout.splitlines() if line.startswith(("REFUSED", "LOADED"))]
    assert len(lines) == 2, done.stdout + done.stderr
    for line in lines:
        assert line.startswith(f"REFUSED {hostile}/owl_openvino.json: 'CACHE_DIR' is not a compile property "
                               "owl-plugin writes"), line
    assert not list(tmp_path.glob("*.blob"))  # nothing compiled into the cache dir
