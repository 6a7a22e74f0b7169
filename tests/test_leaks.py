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


def test_export_from_a_hub_cache_snapshot_copies_the_linked_side_files(tmp_path) -> None:
    """The Hub cache keeps a snapshot's files as symbolic links into blobs/: the known side files (tokenizer,
    profile, ...) are copied as their content, as regular files; unknown ones stay behind as in any folder."""
    snapshot = tiny_llama(tmp_path / "models--org--tiny" / "snapshots" / "abc123", dtype=torch.bfloat16)
    blobs = tmp_path / "models--org--tiny" / "blobs"
    blobs.mkdir()
    linked = [p for p in sorted(snapshot.iterdir()) if p.is_file() and p.name != "config.json"]
    linked.append(snapshot / "credentials.env")
    (snapshot / "credentials.env").write_text("secret\n")
    for index, path in enumerate(linked):
        blob = blobs / f"blob{index}"
        path.rename(blob)
        path.symlink_to(Path("..", "..", "blobs", blob.name))
    assert (snapshot / "tokenizer_config.json").is_symlink() and (snapshot / "model.safetensors").is_symlink()
    result = export_checkpoint(snapshot, tmp_path / "out", format="compact")
    out = tmp_path / "out"
    for name in ("tokenizer_config.json", "generation_config.json", "recipe.yaml"):
        assert (out / name).is_file() and not (out / name).is_symlink(), name
        assert (out / name).read_bytes() == (snapshot / name).read_bytes(), name
    assert "credentials.env" in result.skipped and not (out / "credentials.env").exists()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)


@pytest.mark.parametrize(("name", "message"), [
    ("missing.txt", "--include 'missing.txt': {source}/missing.txt is not a regular file in the source folder"),
    ("../secrets.env", "--include '../secrets.env' is not a file name; name one file of {source} (no folders)"),
    ("/etc/passwd", "--include '/etc/passwd' is not a file name"),
    (".env", "--include '.env' is a hidden file; an export never copies hidden files"),
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


# -- owl validate --serve: the client talks to its own server only -----------------------------------------
def test_serve_client_sends_the_key_and_ignores_proxies(monkeypatch) -> None:
    """A real loopback HTTP server: requests arrive directly (http_proxy points at a closed port, which
    urllib's default opener would use) and carry the server's bearer key."""
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from owl_plugin.integrations.vllm.validate import _get, _post

    seen: list[tuple[str, str | None]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's spelling
            self._answer()

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            self._answer()

        def _answer(self) -> None:
            seen.append((self.path, self.headers.get("Authorization")))
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{closed}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert _post(f"{url}/v1/completions", {"prompt": [1]}, 10, "k3y") == {"ok": True}
        assert _get(f"{url}/health", 10)[0] == 200
    finally:
        server.shutdown()
        server.server_close()
    assert seen == [("/v1/completions", "Bearer k3y"), ("/health", None)]


def test_serve_retries_a_port_taken_before_the_server_bound_it(tmp_path) -> None:
    """Real vLLM in its venv: the first port is taken (held here) between choosing and binding; the server
    exits with 'address already in use' and is started again on another port, with a random API key in
    its environment rather than on its command line. (The model does not exist, so the second start
    fails at once, for a reason that names the model.)"""
    import os
    import socket
    import subprocess
    import textwrap

    python = Path(__file__).parent.parent / ".venv-vllm" / "bin" / "python"
    if not python.is_file():
        pytest.skip(f"{python} does not exist; `make setup-vllm` builds it")
    code = textwrap.dedent("""
        import json, sys
        from pathlib import Path
        import owl_plugin.integrations.vllm.validate as validate
        from owl_plugin.validation.protocol import ServeSettings
        ports = [int(sys.argv[1])]
        chosen = validate._free_port
        validate._free_port = lambda: ports.pop() if ports else chosen()  # the race, made certain
        server = validate.Server(sys.argv[2], Path(sys.argv[3]), max_model_len=64,
                                 settings=ServeSettings(requests=1, concurrency=1, startup_timeout=240))
        first = server.port
        command = " ".join(server.process.args)
        try:
            server.wait_ready()
            error = None
        except Exception as failure:
            error = str(failure)
        finally:
            server.stop()
        print(json.dumps({"attempts": server.attempts, "first": first, "last": server.port, "error": error,
                          "key_on_command_line": server.api_key in command, "key_length": len(server.api_key)}))
    """)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([str(python), "-c", code, str(port), str(tmp_path / "no-such-model"),
                               str(tmp_path / "serve.log")], capture_output=True, text=True, timeout=600,
                              env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    log = (tmp_path / "serve.log").read_text(errors="replace").lower()
    assert report["first"] == port and report["last"] != port and report["attempts"] == 2, report
    assert "address already in use" in log
    assert report["error"] and "no-such-model" in report["error"], report
    assert not report["key_on_command_line"] and report["key_length"] >= 32
