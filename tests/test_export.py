"""owl export: dense and compact checkpoints of a pruned Llama, reloaded bit for bit; atomicity."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from compact_helpers import (
    BLOCK_LINEAR_COUNT,
    PYTHON,
    assert_state_equal,
    load_state,
    stored_tensors,
    tiny_llama,
)

from owl_plugin.cli import main
from owl_plugin.export import PAUSE_ENV, export_checkpoint
from owl_plugin.formats.compact_config import GUARD_FILE, GUARD_KEY
from owl_plugin.profile import ModuleSparsity, SparsityProfile

SIDE_FILES = ("generation_config.json", "recipe.yaml", "tokenizer_config.json")


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    return {
        "fp32": tiny_llama(root / "fp32", dtype=torch.float32),
        "bf16": tiny_llama(root / "bf16", dtype=torch.bfloat16),
    }


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


@pytest.mark.parametrize(("dtype", "max_ratio", "shard_bytes"), [("fp32", 0.34, 150_000), ("bf16", 0.37, 2**31)])
def test_dense_and_compact_reload_bit_identical(sources, tmp_path, dtype, max_ratio, shard_bytes) -> None:
    source = sources[dtype]
    dense = export_checkpoint(source, tmp_path / "dense", format="dense", max_shard_bytes=shard_bytes)
    compact = export_checkpoint(source, tmp_path / "compact", format="compact", max_shard_bytes=shard_bytes)

    reference = stored_tensors(source)
    assert_state_equal(load_state(tmp_path / "dense"), reference)
    assert_state_equal(load_state(tmp_path / "compact"), reference)

    assert len(compact.pruned_modules) == BLOCK_LINEAR_COUNT
    assert compact.pruned_ratio <= max_ratio, compact.summary()
    assert compact.checkpoint_ratio < 0.6 and dense.pruned_ratio == 1.0
    assert set(compact.checksums) == {p.name for p in (tmp_path / "compact").glob("*.safetensors")}
    print(f"\n{dtype}: {compact.summary()}")

    dense_config, compact_config = _config(tmp_path / "dense"), _config(tmp_path / "compact")
    assert "quantization_config" not in dense_config and "sparsity_config" not in dense_config
    assert GUARD_KEY not in dense_config
    quant = compact_config["quantization_config"]
    assert {k: quant[k] for k in ("quant_method", "format", "version")} == {
        "quant_method": "owl_sparse", "format": "bitmask", "version": 1}
    assert quant["compressed_modules"][:3] == [
        "model.layers.0.mlp.down_proj", "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"]
    assert compact_config[GUARD_KEY] == GUARD_FILE
    stored = stored_tensors(tmp_path / "compact")
    assert "model.layers.0.mlp.up_proj.weight" not in stored
    assert stored["model.layers.0.mlp.up_proj.weight_bitmask"].dtype == torch.uint8
    assert "model.norm.weight" in stored and "model.embed_tokens.weight" in stored
    if shard_bytes < 2**31:
        assert (tmp_path / "compact" / "model.safetensors.index.json").is_file()
    for name in SIDE_FILES:
        for output in ("dense", "compact"):
            assert (tmp_path / output / name).read_bytes() == (source / name).read_bytes()
    assert SparsityProfile.load(tmp_path / "compact").method == "measured"  # SPEC.md: the folder holds a profile
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging folders left behind"


def test_profile_chooses_the_compressed_modules(sources, tmp_path) -> None:
    source = sources["fp32"]
    modules = {f"model.layers.{i}.mlp.{p}": ModuleSparsity(0.7, 64 * 128, f"model.layers.{i}")
               for i in range(4) for p in ("up_proj", "down_proj")}
    profile = SparsityProfile(method="owl", target=0.7, modules=modules)
    export_checkpoint(source, tmp_path / "compact", format="compact", profile=profile)

    assert _config(tmp_path / "compact")["quantization_config"]["compressed_modules"] == list(modules)
    stored = stored_tensors(tmp_path / "compact")
    assert "model.layers.0.self_attn.q_proj.weight" in stored  # not in the profile: stays dense
    assert "model.layers.0.mlp.up_proj.weight_values" in stored
    assert SparsityProfile.load(tmp_path / "compact").sparsities == profile.sparsities
    assert_state_equal(load_state(tmp_path / "compact"), stored_tensors(source))


def test_compact_source_exports_back_to_dense(sources, tmp_path) -> None:
    export_checkpoint(sources["bf16"], tmp_path / "compact", format="compact")
    export_checkpoint(tmp_path / "compact", tmp_path / "dense", format="dense")
    assert stored_tensors(tmp_path / "dense").keys() == stored_tensors(sources["bf16"]).keys()
    assert_state_equal(stored_tensors(tmp_path / "dense"), stored_tensors(sources["bf16"]))
    assert "quantization_config" not in _config(tmp_path / "dense")


def test_a_sharded_source_whose_index_disagrees_with_its_shards_is_refused(sources, tmp_path) -> None:
    """A tensor a shard holds but the index leaves out was dropped from the export without a word (verification
    compared against the same index); an index naming the wrong shard gave safetensors' bare 'does not contain'."""
    from owl_plugin.checkpoint import CorruptCheckpointError

    sharded = tmp_path / "sharded"
    export_checkpoint(sources["fp32"], sharded, format="dense", max_shard_bytes=150_000)
    index_path = sharded / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    left_out = dict(index, weight_map={k: v for k, v in index["weight_map"].items() if k != "model.norm.weight"})
    index_path.write_text(json.dumps(left_out))
    with pytest.raises(CorruptCheckpointError, match=r"holds 'model.norm.weight', which model.safetensors.index"
                                                     r".json does not list \(1 such tensors"):
        export_checkpoint(sharded, tmp_path / "out", format="compact")
    held = index["weight_map"]["model.norm.weight"]
    elsewhere = next(shard for shard in shards if shard != held)
    index_path.write_text(json.dumps(dict(index, weight_map={**index["weight_map"], "model.norm.weight": elsewhere})))
    with pytest.raises(CorruptCheckpointError, match=f"lists 'model.norm.weight' in .*{elsewhere}, which does not "
                                                     "hold it"):
        export_checkpoint(sharded, tmp_path / "out", format="compact")
    assert not (tmp_path / "out").exists()


def test_refuses_what_it_cannot_export(sources, tmp_path) -> None:
    unpruned = tiny_llama(tmp_path / "unpruned", dtype=torch.float32, sparsity=0.0)
    with pytest.raises(ValueError, match="unpruned holds no pruned weights .* prune it first"):
        export_checkpoint(unpruned, tmp_path / "out", format="compact")
    with pytest.raises(ValueError, match="format='gguf' is not supported"):
        export_checkpoint(unpruned, tmp_path / "out", format="gguf")
    config = _config(unpruned)
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (unpruned / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="quant_method='gptq'; owl export reads dense or owl_sparse"):
        export_checkpoint(unpruned, tmp_path / "out", format="dense")
    with pytest.raises(ValueError, match="would contain or replace the source"):
        export_checkpoint(sources["fp32"], sources["fp32"].parent, format="dense", overwrite=True)
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_overwrite_rules(sources, tmp_path) -> None:
    output = tmp_path / "out"
    export_checkpoint(sources["fp32"], output, format="dense")
    (output / "marker.txt").write_text("previous export")
    before = {p.name: p.read_bytes() for p in output.iterdir()}

    with pytest.raises(FileExistsError, match="exists and is not empty; pass overwrite=True"):
        export_checkpoint(sources["fp32"], output, format="compact")
    assert {p.name: p.read_bytes() for p in output.iterdir()} == before  # untouched

    export_checkpoint(sources["fp32"], output, format="compact", overwrite=True)
    assert not (output / "marker.txt").exists()
    assert "quantization_config" in _config(output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left beside it


def test_cli_export(sources, tmp_path, capsys) -> None:
    output = tmp_path / "cli"
    assert main(["export", str(sources["bf16"]), "--format", "compact", "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert f"compact export in {output}" in printed
    assert "(ratio 0." in printed  # the pruned-weights and whole-checkpoint size ratios are printed
    assert main(["export", str(sources["bf16"]), "--format", "dense", "--output", str(output)]) == 2
    assert "exists and is not empty; pass overwrite=True (owl export --overwrite)" in capsys.readouterr().err
    assert main(["export", str(sources["bf16"]), "--format", "dense", "--output", str(output), "--overwrite"]) == 0
    assert "quantization_config" not in _config(output)


# -- kill safety -----------------------------------------------------------------------------
def _start_export(source: Path, output: Path, *, pause: float) -> subprocess.Popen:
    code = ("import sys; from owl_plugin.export import export_checkpoint; "
            "export_checkpoint(sys.argv[1], sys.argv[2], format='compact', overwrite=True)")
    env = {**os.environ, PAUSE_ENV: str(pause), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([PYTHON, "-c", code, str(source), str(output)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for_staging(parent: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    prefix = f".out.tmp-{process.pid}-"  # earlier killed runs leave their own staging folders
    while not any(p.name.startswith(prefix) for p in parent.iterdir()):
        assert process.poll() is None, f"export ended early: {process.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "the export never started staging"
        time.sleep(0.02)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _kill_after(process: subprocess.Popen, parent: Path, delay: float) -> None:
    _wait_for_staging(parent, process)
    time.sleep(delay)
    assert process.poll() is None, "the export finished before the kill; raise the pause"
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_sigkill_never_leaves_a_partial_or_damaged_output(sources, tmp_path) -> None:
    source, output = sources["fp32"], tmp_path / "out"
    # 39 tensors written, then 39 verified, 0.03 s each: the kills land while writing and while verifying
    for delay in (0.0, 1.6):
        _kill_after(_start_export(source, output, pause=0.03), tmp_path, delay)
        assert not output.exists(), f"partial output after a kill {delay} s into staging"

    export_checkpoint(source, output, format="dense")  # also clears the killed runs' staging folders
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    previous = _snapshot(output)
    for delay in (0.5, 2.0):
        _kill_after(_start_export(source, output, pause=0.03), tmp_path, delay)
        assert _snapshot(output) == previous, f"previous output damaged by a kill {delay} s into staging"

    export_checkpoint(source, output, format="compact", overwrite=True)
    assert "quantization_config" in _config(output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# -- corrupted sources ---------------------------------------------------------------------------
def test_corrupted_compact_sources_give_errors_naming_the_tensor(sources, tmp_path) -> None:
    """The core decoder (CheckpointFolder, what export reads with) names the broken tensor or file."""
    from safetensors.torch import load_file, save_file

    from owl_plugin.checkpoint import CorruptCheckpointError, check_safetensors_file
    from owl_plugin.formats.compact import CompactFormatError

    compact = tmp_path / "compact"
    export_checkpoint(sources["fp32"], compact, format="compact")
    module = "model.layers.2.mlp.down_proj"

    dropped = tmp_path / "dropped"  # one value fewer than the bitmask marks
    shutil.copytree(compact, dropped)
    tensors = load_file(dropped / "model.safetensors")
    count = tensors[f"{module}.weight_values"].numel()
    tensors[f"{module}.weight_values"] = tensors[f"{module}.weight_values"][:-1].clone()
    save_file(tensors, dropped / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CompactFormatError, match=re.escape(
            f"{module}.weight: weight_bitmask marks {count} non-zero elements but weight_values holds {count - 1}")):
        export_checkpoint(dropped, tmp_path / "out", format="dense")

    truncated = tmp_path / "truncated"  # the last bytes of the file are gone
    shutil.copytree(compact, truncated)
    path = truncated / "model.safetensors"
    header = check_safetensors_file(path)  # the intact file passes; its last tensor is the one cut off below
    last = max(header, key=lambda name: header[name]["data_offsets"][1])
    size = path.stat().st_size
    os.truncate(path, size - 10)
    with pytest.raises(CorruptCheckpointError) as error:
        export_checkpoint(truncated, tmp_path / "out", format="dense")
    assert str(error.value).startswith(f"{path} is truncated: {size - 10} bytes, but its header needs {size}; "
                                       f"tensor '{last}' is cut off (1 of {len(header)} tensors")

    sharded = tmp_path / "sharded"  # an index that lists a shard which is not there
    export_checkpoint(sources["fp32"], sharded, format="compact", max_shard_bytes=150_000)
    shard = sorted(sharded.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(CorruptCheckpointError, match=rf"{re.escape(str(shard))} is missing; "
                                                     r"model.safetensors.index.json lists it for \d+ tensors"):
        export_checkpoint(sharded, tmp_path / "out", format="dense")
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
