"""Publishing on the Hub fails clearly without a token, offline or when the Hub is unreachable, and never
touches the local export; bad repo ids are refused by name. Real huggingface_hub, no mocks: offline mode,
an empty HF_HOME and an endpoint nobody listens on are real conditions this machine can produce.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from compact_helpers import tiny_llama

from owl_plugin.cli import main
from owl_plugin.export import export_checkpoint
from owl_plugin.hub import HubOfflineError, push_to_hub

REPO = "my-org/tiny-owl-70"
HUB_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                 "HF_ENDPOINT", "HF_OIDC_RESOURCE", "HF_HOME")


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hub")
    source = tiny_llama(root / "source", dtype=torch.bfloat16)
    export_checkpoint(source, root / "export", format="compact")
    return root / "export"


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _owl(*args: str, hf_home: Path, **variables: str) -> subprocess.CompletedProcess:
    """``python -m owl_plugin ARGS`` with a clean Hugging Face environment (empty HF_HOME: no saved login)."""
    env = {k: v for k, v in os.environ.items() if k not in HUB_VARIABLES}
    env.update(HF_HOME=str(hf_home), OMP_NUM_THREADS="1", TQDM_DISABLE="1", PYTHONWARNINGS="ignore", **variables)
    return subprocess.run([sys.executable, "-m", "owl_plugin", *args], capture_output=True, text=True, env=env,
                          timeout=300, check=False)


@pytest.mark.parametrize("repo_id", ["no-namespace", "org/name/extra", "org/na--me", "org/name.git", "-org/name",
                                     "org/", "org/na me"])
def test_bad_repo_id_is_refused_by_name(export, repo_id) -> None:
    with pytest.raises(ValueError) as error:
        push_to_hub(export, repo_id, token="hf_unused")
    assert str(error.value).startswith(f"--push-to-hub repo id={repo_id!r} is not a Hugging Face Hub id; "
                                       "expected ORG/NAME")


def test_a_folder_that_is_not_an_export_is_refused(tmp_path) -> None:
    with pytest.raises(FileNotFoundError,
                       match=r"is not an export folder \(no config.json\); write one with `owl export"):
        push_to_hub(tmp_path, REPO, token="hf_unused")


def test_offline_mode_fails_before_any_request(export, monkeypatch) -> None:
    before = _snapshot(export)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubOfflineError, match=rf"cannot push to {REPO}: Hugging Face Hub offline mode is on "
                                              r"\(HF_HUB_OFFLINE=1\); unset HF_HUB_OFFLINE"):
        push_to_hub(export, REPO, token="hf_unused")
    assert _snapshot(export) == before


def test_owl_push_without_a_token(export, tmp_path) -> None:
    before = _snapshot(export)
    result = _owl("push", str(export), REPO, hf_home=tmp_path / "hf-home")  # empty HF_HOME: no saved login
    assert result.returncode == 2, result.stderr  # found before any request: the README's exit 2
    assert ("owl push: error: no Hugging Face token found: set HF_TOKEN=hf_... (a token with write access from "
            "https://huggingface.co/settings/tokens) or run `hf auth login`; nothing was uploaded") in result.stderr
    assert _snapshot(export) == before


@pytest.mark.parametrize("name", ["credentials.env", ".env", "id_rsa", "server.pem", "hf_token", "token.txt",
                                  "notes/my-secret.txt", "AWS_CREDENTIALS", "private.key"])
def test_push_refuses_files_that_look_like_secrets_before_any_request(export, tmp_path, name) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    for path in export.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("HF_TOKEN=hf_leak\n")
    before = {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}
    endpoint = f"http://127.0.0.1:{_closed_port()}"  # a request would fail with ConnectError (exit 3), not 2
    result = _owl("push", str(folder), REPO, hf_home=tmp_path / "hf-home", HF_TOKEN="hf_not_a_real_token",
                  HF_ENDPOINT=endpoint)
    if name.startswith("."):  # hidden files are never uploaded: nothing to refuse, the push goes on to the network
        assert result.returncode == 3 and "ConnectError" in result.stderr, result.stderr
        assert name not in result.stdout
        return
    assert result.returncode == 2, result.stderr
    assert f"refusing to push {folder}: 1 file(s) look like secrets: {name}" in result.stderr
    assert "nothing was uploaded" in result.stderr and "ConnectError" not in result.stderr
    assert {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()} \
        == before


def test_push_refuses_a_link_out_of_the_folder_before_any_request(export, tmp_path) -> None:
    """A symbolic link in the folder to a file elsewhere (``notes.txt -> /etc/hostname``) would upload that file."""
    folder = tmp_path / "export"
    folder.mkdir()
    for path in export.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    outside = tmp_path / "private-notes.txt"
    outside.write_text("not for the Hub\n")
    (folder / "notes.txt").symlink_to(outside)
    endpoint = f"http://127.0.0.1:{_closed_port()}"  # a request would fail with ConnectError (exit 3), not 2
    result = _owl("push", str(folder), REPO, hf_home=tmp_path / "hf-home", HF_TOKEN="hf_not_a_real_token",
                  HF_ENDPOINT=endpoint)
    assert result.returncode == 2, result.stderr
    assert f"notes.txt is a link to {outside}, outside the folder" in result.stderr
    assert "ConnectError" not in result.stderr


def test_push_lists_the_files_and_creates_private_repos_unless_public(export, tmp_path) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    for flags, visibility in (((), "private"), (("--public",), "PUBLIC")):
        result = _owl("push", str(export), REPO, *flags, hf_home=tmp_path / "hf-home", HF_TOKEN="hf_not_a_real_token",
                      HF_ENDPOINT=endpoint)
        assert result.returncode == 3, result.stderr  # listed first, then the (refused) connection
        files = sorted(p.name for p in export.iterdir() if not p.name.startswith("."))
        assert f"uploading {len(files)} files of {export} to {REPO} (a new repository is created {visibility}):" \
            in result.stdout
        for name in files:
            assert f"  {name}  (" in result.stdout
    assert _owl("push", str(export), REPO, "--public", "--private", hf_home=tmp_path / "hf-home").returncode == 2


def test_export_push_checks_come_first(export, tmp_path, monkeypatch, capsys) -> None:
    output = tmp_path / "dense"
    assert main(["export", str(export), "--format", "dense", "--output", str(output), "--push-to-hub",
                 "just-a-name"]) == 2
    assert "--push-to-hub repo id='just-a-name' is not a Hugging Face Hub id" in capsys.readouterr().err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["export", str(export), "--format", "dense", "--output", str(output), "--push-to-hub", REPO]) == 2
    error = capsys.readouterr().err
    assert "offline mode is on" in error and "nothing was exported" in error
    assert list(tmp_path.iterdir()) == []  # refused before the export, not after it


def test_export_then_unreachable_hub_leaves_a_complete_local_export(export, tmp_path) -> None:
    output = tmp_path / "dense"  # the compact export exports back to dense
    endpoint = f"http://127.0.0.1:{_closed_port()}"  # a real connection attempt, refused
    result = _owl("export", str(export), "--format", "dense", "--output", str(output), "--push-to-hub", REPO,
                  hf_home=tmp_path / "hf-home", HF_TOKEN="hf_not_a_real_token", HF_ENDPOINT=endpoint)
    assert result.returncode == 3, result.stderr  # exported, then the push failed
    assert f"dense export in {output}" in result.stdout
    assert f"cannot reach the Hugging Face Hub to prepare {REPO} (ConnectError" in result.stderr
    assert "check the network (or HF_ENDPOINT) and push again" in result.stderr
    assert f"the folder {output} is complete and unchanged; push it again with `owl push {output} {REPO}`" \
        in result.stderr
    card = (output / "README.md").read_text()  # the published folder is complete; its card names the repo
    assert "# tiny-owl-70" in card and f'from_pretrained("{REPO}")' in card
    assert (output / "model.safetensors").is_file() and (output / "sparsity_profile.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
