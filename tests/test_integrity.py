"""Compact checkpoints carry a SHA-256 per tensor, and tampered copies are refused by name.

Real components throughout: tiny random Llamas exported by the project's exporter, loaded with
``AutoModelForCausalLM.from_pretrained`` (the plugin's quantizer) and with the core reader
``CheckpointFolder``. The vLLM loader gets the same tampered copies in ``test_vllm_integrity.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from compact_helpers import assert_state_equal, load_state, stored_tensors, tiny_llama
from tamper import dense_twin, drop_tensor, escaping_index, escaping_weights_file, mask_swap, unlisted_module

from owl_plugin.checkpoint import CheckpointFolder
from owl_plugin.export import export_checkpoint
from owl_plugin.formats.integrity import VERIFY_ENV, ChecksumError, CheckpointPathError, member_path

MODULE = "model.layers.2.mlp.down_proj"


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("integrity")
    source = tiny_llama(root / "source", dtype=torch.float32)
    export_checkpoint(source, root / "compact", format="compact")
    export_checkpoint(source, root / "sharded", format="compact", max_shard_bytes=150_000)
    return {"root": root, "source": source, "compact": root / "compact", "sharded": root / "sharded"}


def tampered(exports: dict[str, Path], case: str, target: Path) -> tuple[type[Exception], list[str]]:
    """Build one tampered copy at ``target``; returns the error type and the words its message must hold."""
    compact = exports["compact"]
    if case == "mask-swap":
        shard = mask_swap(compact, target, MODULE)
        return ChecksumError, [f"{MODULE}.weight_bitmask in {shard}", "SHA-256", VERIFY_ENV]
    if case == "dense-twin":
        shard = dense_twin(compact, target, MODULE)
        return ValueError, [f"{MODULE}.weight is stored dense in {shard}", f"{MODULE}.weight_values"]
    if case in ("missing-norm", "missing-embedding", "missing-piece"):
        key = {"missing-norm": "model.norm.weight", "missing-embedding": "model.embed_tokens.weight",
               "missing-piece": f"{MODULE}.weight_values"}[case]
        drop_tensor(compact, target, key)
        if case == "missing-piece":
            return ValueError, [f"{MODULE}.weight", "lacks", "weight_values']"]
        return ValueError, [f"{key} is missing from {target}"]
    if case == "unlisted-module":
        unlisted_module(compact, target, MODULE)
        return ValueError, [f"{MODULE}.weight_", "does not list in quantization_config.compressed_modules"]
    if case in ("index-parent", "index-absolute"):
        name, escaped = escaping_index(exports["sharded"], target, absolute=case == "index-absolute")
        return CheckpointPathError, [f"weight_map[{name!r}]", repr(escaped), "outside the checkpoint folder"]
    raise AssertionError(case)


CASES = ["mask-swap", "dense-twin", "missing-norm", "missing-embedding", "missing-piece", "unlisted-module",
         "index-parent", "index-absolute"]


# -- what the export records ---------------------------------------------------------------------
def test_export_records_the_sha256_of_every_stored_tensor(exports) -> None:
    for name in ("compact", "sharded"):
        config = json.loads((exports[name] / "config.json").read_text())
        checksums = config["quantization_config"]["checksums"]
        stored = stored_tensors(exports[name])
        assert checksums["algorithm"] == "sha256" and set(checksums["tensors"]) == set(stored)
        for key, tensor in stored.items():  # hashed independently: the tensor's bytes as torch holds them
            expected = hashlib.sha256(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            assert checksums["tensors"][key] == expected.hexdigest(), key


def test_untouched_exports_load_in_transformers_and_the_core(exports) -> None:
    reference = stored_tensors(exports["source"])
    for name in ("compact", "sharded"):
        assert_state_equal(load_state(exports[name]), reference)
        with CheckpointFolder(exports[name]) as folder:
            assert_state_equal({n: folder.read_dense(n) for n in folder.dense_names()}, reference)


# -- tampered copies ----------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_transformers_refuses_a_tampered_copy_by_name(exports, tmp_path, case) -> None:
    from transformers import AutoModelForCausalLM

    error_type, words = tampered(exports, case, tmp_path / case)
    with pytest.raises(error_type) as error:
        AutoModelForCausalLM.from_pretrained(tmp_path / case)
    for word in words:
        assert word in str(error.value), (case, str(error.value))


@pytest.mark.parametrize("case", CASES)
def test_core_reader_refuses_a_tampered_copy_by_name(exports, tmp_path, case) -> None:
    """``CheckpointFolder`` (export, validate and the vLLM check read through it) says the same."""
    error_type, words = tampered(exports, case, tmp_path / case)
    with pytest.raises(error_type) as error:
        CheckpointFolder(tmp_path / case)
    for word in words:
        assert word in str(error.value), (case, str(error.value))


def test_escaping_transformers_weights_is_refused_by_both(exports, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    escaped = escaping_weights_file(exports["compact"], tmp_path / "escape")
    with pytest.raises(ValueError, match="must reference a file inside the model directory"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "escape")  # transformers' own check
    with pytest.raises(CheckpointPathError, match=rf"transformers_weights names the weights file '{escaped}'"):
        CheckpointFolder(tmp_path / "escape")


@pytest.mark.parametrize("name", ["../x.safetensors", "/etc/x.safetensors", "a/../../x.safetensors",
                                  "C:\\x.safetensors", "..\\x.safetensors", "", None])
def test_member_paths_leaving_the_folder_are_refused(tmp_path, name) -> None:
    with pytest.raises(CheckpointPathError, match="weight_map"):
        member_path(tmp_path, name, listed_in="index weight_map")
    assert member_path(tmp_path, "sub/model.safetensors", listed_in="x") == tmp_path / "sub" / "model.safetensors"


# -- opt-out and older exports ------------------------------------------------------------------
def test_opt_out_skips_only_the_hashing(exports, tmp_path, monkeypatch) -> None:
    """With OWL_VERIFY_CHECKSUMS=0 the swapped mask loads (wrong weights: the checksum was the only guard);
    the dense twin is still refused."""
    mask_swap(exports["compact"], tmp_path / "swap", MODULE)
    dense_twin(exports["compact"], tmp_path / "twin", MODULE)
    monkeypatch.setenv(VERIFY_ENV, "0")
    loaded = load_state(tmp_path / "swap")
    reference = stored_tensors(exports["source"])
    assert not torch.equal(loaded[f"{MODULE}.weight"], reference[f"{MODULE}.weight"])
    with pytest.raises(ValueError, match=f"{MODULE}.weight is stored dense"):
        load_state(tmp_path / "twin")


def test_an_export_without_checksums_loads_with_a_warning(exports, tmp_path, caplog) -> None:
    older = tmp_path / "older"
    shutil.copytree(exports["compact"], older)
    config = json.loads((older / "config.json").read_text())
    del config["quantization_config"]["checksums"]
    (older / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="owl_plugin.formats.integrity"):
        assert_state_equal(load_state(older), stored_tensors(exports["source"]))
    assert f"{older / 'config.json'} records no tensor checksums" in caplog.text
