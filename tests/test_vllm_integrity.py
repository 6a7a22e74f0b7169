"""vLLM refuses tampered compact checkpoints by name, before any engine starts.

The same tampered copies as ``test_integrity.py`` (tiny random Llamas exported by the project's
exporter, see ``tests/tamper.py``) go through one vLLM process in the vLLM venv
(``python -m owl_plugin.integrations.vllm.check --expect-failure DIR ...``, the style of
``test_vllm_plugin.py``): every load must fail with an error naming the file and the tensor. The
checks run while vLLM builds its config, so no engine starts (measured: ~10-20 s for the whole
process, mostly ``import vllm``). A second small process shows the untouched exports pass the same
check (the full compact load and generation is ``test_vllm_plugin.py``'s job).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from compact_helpers import tiny_llama
from tamper import dense_twin, drop_tensor, escaping_index, escaping_weights_file, mask_swap, unlisted_module

from owl_plugin.export import export_checkpoint

REPO = Path(__file__).resolve().parent.parent
VLLM_PYTHON = Path(os.environ.get("OWL_VLLM_VENV", REPO / ".venv-vllm")) / "bin" / "python"
MODULE = "model.layers.2.mlp.down_proj"
TIMEOUT = 600

pytestmark = pytest.mark.skipif(not VLLM_PYTHON.exists() and not os.environ.get("CI"), reason=(
    f"the vLLM venv is missing ({VLLM_PYTHON}); build it with `make setup-vllm`"))


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str, list[str]]]:
    """Case → (tampered folder, expected error type, words the error must hold); plus the untouched exports."""
    root = tmp_path_factory.mktemp("vllm-integrity")
    source = tiny_llama(root / "source", dtype=torch.float32)
    compact, sharded = root / "compact", root / "sharded"
    export_checkpoint(source, compact, format="compact")
    export_checkpoint(source, sharded, format="compact", max_shard_bytes=150_000)
    cases: dict[str, tuple[Path, str, list[str]]] = {}
    shard = mask_swap(compact, root / "mask-swap", MODULE)
    cases["mask-swap"] = (root / "mask-swap", "ChecksumError", [f"{MODULE}.weight_bitmask in {shard}", "SHA-256"])
    shard = dense_twin(compact, root / "dense-twin", MODULE)
    cases["dense-twin"] = (root / "dense-twin", "CompactFormatError", [f"{MODULE}.weight is stored dense in {shard}"])
    for case, key in (("missing-norm", "model.norm.weight"), ("missing-embedding", "model.embed_tokens.weight")):
        drop_tensor(compact, root / case, key)
        cases[case] = (root / case, "CompactFormatError", [f"{key} is missing from {root / case}"])
    drop_tensor(compact, root / "missing-piece", f"{MODULE}.weight_shape")
    cases["missing-piece"] = (root / "missing-piece", "CompactFormatError",
                              [f"{MODULE}.weight", "lacks ['weight_shape']"])
    unlisted_module(compact, root / "unlisted-module", MODULE)
    cases["unlisted-module"] = (root / "unlisted-module", "CompactFormatError",
                                [f"{MODULE}.weight_", "does not list in quantization_config.compressed_modules"])
    for case, absolute in (("index-parent", False), ("index-absolute", True)):
        name, escaped = escaping_index(sharded, root / case, absolute=absolute)
        cases[case] = (root / case, "CheckpointPathError",
                       [f"weight_map[{name!r}]", repr(escaped), "outside the checkpoint folder"])
    escaped = escaping_weights_file(compact, root / "weights-file")
    cases["weights-file"] = (root / "weights-file", "CheckpointPathError",
                             [f"transformers_weights names the weights file {escaped!r}", "outside"])
    stray = root / "stray-file"  # no index: vLLM would read every *.safetensors file of the folder
    escaping_weights_file(compact, stray)
    config = json.loads((stray / "config.json").read_text())
    config.pop("transformers_weights")
    (stray / "config.json").write_text(json.dumps(config))
    (stray / "model.safetensors").rename(stray / "model-extra.safetensors")
    (stray.parent / "stray-file-outside" / "model.safetensors").rename(stray / "model.safetensors")
    cases["stray-file"] = (stray, "CompactFormatError", [f"{stray / 'model-extra.safetensors'} is not part of"])
    return {"root": root, "compact": compact, "sharded": sharded, "cases": cases}


@pytest.fixture(scope="module")
def vllm_failures(folders) -> dict[str, dict]:
    out = folders["root"] / "report.json"
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", OMP_NUM_THREADS="1",
               VLLM_CACHE_ROOT=str(folders["root"] / "vllm-cache"))
    command = [str(VLLM_PYTHON), "-m", "owl_plugin.integrations.vllm.check", "--max-model-len", "64",
               "--json", str(out)]
    for path, _, _ in folders["cases"].values():
        command += ["--expect-failure", str(path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert out.is_file(), f"check.py exited with {result.returncode} and wrote no report:\n{result.stderr[-5000:]}"
    return {failure["model"]: failure for failure in json.loads(out.read_text())["failures"]}


@pytest.mark.parametrize("case", ["mask-swap", "dense-twin", "missing-norm", "missing-embedding", "missing-piece",
                                  "unlisted-module", "index-parent", "index-absolute", "weights-file", "stray-file"])
def test_vllm_refuses_a_tampered_copy_by_name(folders, vllm_failures, case) -> None:
    path, error_type, words = folders["cases"][case]
    failure = vllm_failures[str(path)]
    assert failure["error_type"] == error_type, failure
    for word in words:
        assert word in failure["error"], (case, failure["error"])


CHECK_UNTOUCHED = """
import sys
from owl_plugin.integrations.vllm.quant_config import OwlSparseConfig
import json
for folder in sys.argv[1:]:
    quant = json.load(open(folder + "/config.json"))["quantization_config"]
    OwlSparseConfig.from_config(quant).maybe_update_config(folder)
    print("passed", folder)
"""


def test_vllm_config_accepts_the_untouched_exports(folders) -> None:
    folders_ = [str(folders["compact"]), str(folders["sharded"])]
    result = subprocess.run([str(VLLM_PYTHON), "-c", CHECK_UNTOUCHED, *folders_], capture_output=True, text=True,
                            timeout=TIMEOUT, check=False)
    assert result.returncode == 0, result.stderr[-5000:]
    assert result.stdout.split("\n")[:2] == [f"passed {folder}" for folder in folders_]
