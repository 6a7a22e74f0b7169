"""transformers reads compact checkpoints through the plugin, registered without ``import owl_plugin``.

Also pins down what plain transformers 5 does with a compact checkpoint: with the load guard
it stops with a file-not-found error; without the guard it would only warn and random-initialise
every pruned weight (the reason the guard exists).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from compact_helpers import assert_state_equal, load_state, run_python, same_bits, stored_tensors, tiny_llama
from safetensors.torch import load_file, save_file

from owl_plugin.export import export_checkpoint
from owl_plugin.formats.compact import CompactFormatError
from owl_plugin.formats.compact_config import GUARD_FILE, GUARD_KEY

FIX = "the compact checkpoint is corrupt; export it again with `owl export MODEL --format compact`"
MODULE = "model.layers.1.mlp.up_proj"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loader")
    result = {}
    for dtype, torch_dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        source = tiny_llama(root / f"{dtype}-source", dtype=torch_dtype)
        result[f"{dtype}-source"] = source
        result[f"{dtype}-compact"] = root / f"{dtype}-compact"
        export_checkpoint(source, result[f"{dtype}-compact"], format="compact")
    return result


# -- auto-registration ---------------------------------------------------------------------------
LOAD_IN_FRESH_PROCESS = """
import sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
torch.save({k: v.clone() for k, v in model.state_dict().items()}, sys.argv[2])
print("registered:", "owl_plugin.integrations.transformers" in sys.modules)
"""


def test_fresh_process_loads_compact_without_importing_owl_plugin(checkpoints, tmp_path) -> None:
    args = [str(checkpoints["bf16-compact"]), str(tmp_path / "state.pt")]
    result = run_python(LOAD_IN_FRESH_PROCESS, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "registered: True" in result.stdout
    loaded = torch.load(tmp_path / "state.pt")
    assert_state_equal(loaded, stored_tensors(checkpoints["bf16-source"]))


PLAIN_TRANSFORMERS = """
import sys, torch
from transformers import AutoModelForCausalLM
guarded, unguarded, state = sys.argv[1:]
try:
    AutoModelForCausalLM.from_pretrained(guarded)
except FileNotFoundError as error:
    print("refused:", error)
model = AutoModelForCausalLM.from_pretrained(unguarded)
torch.save({k: v.clone() for k, v in model.state_dict().items()}, state)
"""


@pytest.fixture(scope="module")
def plain_transformers(checkpoints, tmp_path_factory):
    """One interpreter without the plugin: load the compact checkpoint as is, then without its guard."""
    root = tmp_path_factory.mktemp("plain")
    unguarded = root / "unguarded"
    shutil.copytree(checkpoints["fp32-compact"], unguarded)
    config = json.loads((unguarded / "config.json").read_text())
    del config[GUARD_KEY]
    (unguarded / "config.json").write_text(json.dumps(config))
    args = [str(checkpoints["fp32-compact"]), str(unguarded), str(root / "state.pt")]
    result = run_python(PLAIN_TRANSFORMERS, *args, env={"OWL_PLUGIN_NO_AUTOLOAD": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result, torch.load(root / "state.pt")


def test_plain_transformers_refuses_a_compact_checkpoint_loudly(checkpoints, plain_transformers) -> None:
    result, _ = plain_transformers
    assert "Unknown quantization type, got owl_sparse" in result.stderr  # transformers only warns about this ...
    assert f"refused: No such file or directory: {checkpoints['fp32-compact']}/{GUARD_FILE}" in result.stdout


def test_without_the_guard_plain_transformers_would_silently_random_initialise(checkpoints, plain_transformers):
    _, loaded = plain_transformers  # ... and loaded without an error
    source = stored_tensors(checkpoints["fp32-source"])
    assert not same_bits(loaded[f"{MODULE}.weight"], source[f"{MODULE}.weight"])  # random, not the checkpoint
    assert int((loaded[f"{MODULE}.weight"] == 0).sum()) == 0  # nothing of the pruning survived
    assert same_bits(loaded["model.norm.weight"], source["model.norm.weight"])  # unpruned tensors did load


# -- loading -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("stored", "requested"), [("fp32", torch.bfloat16), ("bf16", torch.float32)])
def test_decompressed_weights_take_the_model_dtype(checkpoints, stored, requested) -> None:
    compact = load_state(checkpoints[f"{stored}-compact"], dtype=requested)
    dense = load_state(checkpoints[f"{stored}-source"], dtype=requested)
    assert compact[f"{MODULE}.weight"].dtype == requested
    assert_state_equal(compact, dense)


def test_loaded_model_saves_as_a_dense_checkpoint(checkpoints, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoints["fp32-compact"])
    assert getattr(model.config, "quantization_config", None) is None
    model.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert "quantization_config" not in config and GUARD_KEY not in config
    assert_state_equal(stored_tensors(tmp_path / "saved"), stored_tensors(checkpoints["fp32-source"]))


# -- corrupted checkpoints ---------------------------------------------------------------------
def _corrupt(folder: Path, tmp_path: Path, edit) -> Path:
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    tensors = load_file(broken / "model.safetensors")
    edit(tensors)
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    return broken


def _load_error(folder: Path) -> str:
    from transformers import AutoModelForCausalLM

    with pytest.raises(CompactFormatError) as error:
        AutoModelForCausalLM.from_pretrained(folder)
    return str(error.value)


def test_dropped_value_is_reported_with_the_tensor_name(checkpoints, tmp_path) -> None:
    key = f"{MODULE}.weight_values"
    count = load_file(checkpoints["bf16-compact"] / "model.safetensors")[key].numel()
    broken = _corrupt(checkpoints["bf16-compact"], tmp_path, lambda t: t.update({key: t[key][:-1].clone()}))
    assert _load_error(broken) == (f"{MODULE}.weight: weight_bitmask marks {count} non-zero elements but "
                                   f"weight_values holds {count - 1}; {FIX}")


def test_truncated_bitmask_is_reported_with_the_tensor_name(checkpoints, tmp_path) -> None:
    key = f"{MODULE}.weight_bitmask"
    broken = _corrupt(checkpoints["bf16-compact"], tmp_path, lambda t: t.update({key: t[key][:-3].clone()}))
    assert _load_error(broken) == (f"{MODULE}.weight: weight_bitmask is truncated: 1021 bytes, expected 1024 for "
                                   f"shape [128, 64]; {FIX}")


def test_wrong_shape_is_reported_with_the_tensor_name(checkpoints, tmp_path) -> None:
    key = f"{MODULE}.weight_shape"
    broken = _corrupt(checkpoints["fp32-compact"], tmp_path, lambda t: t.update({key: torch.tensor([64, 128])}))
    assert _load_error(broken) == (f"{MODULE}.weight: weight_shape is [64, 128] but the model expects [128, 64]; "
                                   "the checkpoint does not belong to this model config")


def test_missing_part_is_reported_with_the_tensor_name(checkpoints, tmp_path) -> None:
    broken = _corrupt(checkpoints["fp32-compact"], tmp_path, lambda t: t.pop(f"{MODULE}.weight_values"))
    assert _load_error(broken).startswith(f"{MODULE}.weight: the checkpoint lacks ['{MODULE}.weight_values']")


def test_conversion_op_checks_on_its_own(checkpoints) -> None:
    """The op re-checks (another caller may skip the up-front validation): errors name the tensor."""
    from owl_plugin.integrations.transformers.decompress_op import OwlSparseDecompress

    tensors = load_file(checkpoints["fp32-compact"] / "model.safetensors")
    parts = {"weight_values$": [tensors[f"{MODULE}.weight_values"][:-1]],
             "weight_bitmask$": [tensors[f"{MODULE}.weight_bitmask"]],
             "weight_shape$": [tensors[f"{MODULE}.weight_shape"]]}
    with pytest.raises(CompactFormatError, match=rf"^{MODULE}\.weight: weight_bitmask marks"):
        OwlSparseDecompress().convert(parts, full_layer_name=f"{MODULE}.weight")
    del parts["weight_shape$"]
    lacks = rf"^{MODULE}\.weight: the checkpoint lacks \['{MODULE}.weight_shape'\]"
    with pytest.raises(CompactFormatError, match=lacks):
        OwlSparseDecompress().convert(parts, full_layer_name=f"{MODULE}.weight")


def test_loading_packs_each_linear_as_it_arrives_and_never_holds_its_dense_weight(checkpoints) -> None:
    """With a ``packed`` dict the op packs an ``nn.Linear``'s weight right away and hands transformers a
    zero-strided placeholder (no memory); the copies transformers makes per layer share the dict; without a
    dict (``OWL_SPARSE_DENSE=1``) the op returns the dense weight."""
    import copy

    from transformers import AutoConfig, AutoModelForCausalLM

    from owl_plugin.integrations.transformers.decompress_op import OwlSparseDecompress
    from owl_plugin.kernels import decompress_rows

    tensors = load_file(checkpoints["bf16-compact"] / "model.safetensors")
    parts = {f"{suffix}$": [tensors[f"{MODULE}.{suffix}"]] for suffix in ("weight_values", "weight_bitmask",
                                                                         "weight_shape")}
    reference = load_file(checkpoints["bf16-source"] / "model.safetensors")[f"{MODULE}.weight"]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(checkpoints["bf16-source"]),
                                                 dtype=torch.bfloat16)
    packed: dict = {}
    op = copy.deepcopy(OwlSparseDecompress(packed))
    (placeholder,) = op.convert(parts, full_layer_name=f"{MODULE}.weight", model=model).values()
    assert placeholder.shape == reference.shape and placeholder.stride() == (0, 0)
    assert list(packed) == [MODULE] and same_bits(decompress_rows(packed[MODULE]), reference)
    (dense,) = OwlSparseDecompress().convert(parts, full_layer_name=f"{MODULE}.weight", model=model).values()
    assert same_bits(dense, reference)


# -- the default real model ------------------------------------------------------------------------
@pytest.mark.real_model
def test_real_model_round_trip(tmp_path) -> None:
    from compact_helpers import magnitude_prune_
    from transformers import AutoModelForCausalLM

    from owl_plugin.models import default_model_path

    model = AutoModelForCausalLM.from_pretrained(default_model_path(), dtype=torch.float32)
    magnitude_prune_(model, 0.5)
    ratios = {}
    for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        source = tmp_path / f"pruned-{label}"
        model.to(dtype).save_pretrained(source)
        result = export_checkpoint(source, tmp_path / f"compact-{label}", format="compact")
        ratios[label] = result
        print(f"\nSmolLM2-135M 50% magnitude, {label}: {result.summary()}")
        if label == "fp32":  # bf16 is checked bit for bit by the export's own verification (same reader)
            reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / f"compact-{label}").state_dict()
            assert_state_equal(reloaded, stored_tensors(source))
            del reloaded
        shutil.rmtree(source)
    assert len(ratios["fp32"].pruned_modules) == 30 * 7
    assert ratios["fp32"].pruned_ratio == pytest.approx(0.5 + 1 / 32, abs=0.005)   # values + 1 bit / 32 bits
    assert ratios["bf16"].pruned_ratio == pytest.approx(0.5 + 1 / 16, abs=0.005)   # values + 1 bit / 16 bits


def test_truncated_file_is_reported_with_the_file_and_tensor_name(checkpoints, tmp_path) -> None:
    import os

    from owl_plugin.checkpoint import CorruptCheckpointError, check_safetensors_file

    broken = tmp_path / "broken"
    shutil.copytree(checkpoints["bf16-compact"], broken)
    path = broken / "model.safetensors"
    header = check_safetensors_file(path)
    size = path.stat().st_size
    data_start = size - max(entry["data_offsets"][1] for entry in header.values())
    os.truncate(path, size - 3000)
    cut = sorted((n for n, e in header.items() if data_start + e["data_offsets"][1] > size - 3000),
                 key=lambda n: header[n]["data_offsets"][1])
    from transformers import AutoModelForCausalLM

    with pytest.raises(CorruptCheckpointError) as error:  # safetensors alone says only "file not fully covered"
        AutoModelForCausalLM.from_pretrained(broken)
    assert str(error.value).startswith(f"{path} is truncated: {size - 3000} bytes, but its header needs {size}; "
                                       f"tensor '{cut[0]}' is cut off ({len(cut)} of {len(header)} tensors")


# -- sparse kernels behind from_pretrained --------------------------------------------------------
def decode_logits(model, tokens: list[int], prompt_len: int) -> torch.Tensor:
    """Next-token logits of each step after the prompt, feeding ``tokens`` one at a time through the KV cache."""
    with torch.no_grad():
        out = model(torch.tensor([tokens[:prompt_len]]), use_cache=True)
        logits = [out.logits[0, -1]]
        for token in tokens[prompt_len:-1]:
            out = model(torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
            logits.append(out.logits[0, -1])
    return torch.stack(logits).float()


def test_automodel_loads_the_base_model_of_a_compact_causal_lm(checkpoints, monkeypatch) -> None:
    """``AutoModel`` (as sentence-transformers loads) builds the base model, whose module names lack the causal
    LM's ``model.`` prefix that compressed_modules spells: its linears are packed all the same."""
    from transformers import AutoModel

    from owl_plugin.integrations.transformers.sparse_linear import OwlSparseLinear

    monkeypatch.delenv("OWL_SPARSE_DENSE", raising=False)
    sparse = AutoModel.from_pretrained(checkpoints["fp32-compact"])
    dense = AutoModel.from_pretrained(checkpoints["fp32-source"])
    assert type(sparse).__name__ == "LlamaModel" and MODULE.startswith("model.")
    swapped = [name for name, module in sparse.named_modules() if isinstance(module, OwlSparseLinear)]
    assert len(swapped) == 4 * 7 and MODULE.removeprefix("model.") in swapped
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(sparse(ids).last_hidden_state, dense(ids).last_hidden_state, atol=1e-4, rtol=1e-4)


def test_a_loaded_compact_model_converts_with_to(checkpoints, monkeypatch) -> None:
    """``model.to(torch.bfloat16)`` converts the packed weights the kernels read, not only the buffers beside them:
    the converted model runs on bf16 kernels, equals the dense model converted the same way, and saves bf16."""
    from transformers import AutoModelForCausalLM

    from owl_plugin.integrations.transformers.sparse_linear import OwlSparseLinear

    monkeypatch.delenv("OWL_SPARSE_DENSE", raising=False)
    sparse = AutoModelForCausalLM.from_pretrained(checkpoints["fp32-compact"]).to(torch.bfloat16)
    dense = AutoModelForCausalLM.from_pretrained(checkpoints["fp32-source"]).to(torch.bfloat16)
    layer = sparse.get_submodule(MODULE)
    assert isinstance(layer, OwlSparseLinear) and layer.dtype == torch.bfloat16
    assert layer.packed.tensors["values"] is layer.packed_values and layer.packed_masks.dtype == torch.int32
    ids = torch.randint(0, 256, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(sparse(ids).logits, dense(ids).logits, atol=5e-2, rtol=5e-2)
    assert_state_equal(sparse.state_dict(), dense.state_dict())


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_compact_load_runs_on_the_sparse_kernels_and_holds_no_dense_weight(checkpoints, dtype, monkeypatch) -> None:
    from transformers import AutoModelForCausalLM

    from owl_plugin.formats.compact_config import compressed_modules
    from owl_plugin.integrations.transformers.sparse_linear import OwlSparseLinear

    compact = checkpoints[f"{dtype}-compact"]
    listed = compressed_modules(json.loads((compact / "config.json").read_text())["quantization_config"])
    monkeypatch.delenv("OWL_SPARSE_DENSE", raising=False)
    sparse = AutoModelForCausalLM.from_pretrained(compact)
    swapped = {name for name, module in sparse.named_modules() if isinstance(module, OwlSparseLinear)}
    assert swapped == set(listed) and len(swapped) == 4 * 7

    monkeypatch.setenv("OWL_SPARSE_DENSE", "1")  # the opt-out: today's dense nn.Linear layers
    dense = AutoModelForCausalLM.from_pretrained(compact)
    assert not any(isinstance(module, OwlSparseLinear) for module in dense.modules())

    def resident(model) -> int:
        return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])

    held = {name: sum(t.numel() * t.element_size() for t in m.buffers()) for name, m in sparse.named_modules()
            if name in swapped}
    dense_bytes = {name: dense.get_submodule(name).weight.numel() * dense.get_submodule(name).weight.element_size()
                   for name in swapped}
    assert sum(held.values()) < 0.6 * sum(dense_bytes.values())  # 70% zeros: values + 1 bit each + offsets
    assert resident(sparse) < resident(dense)

    ids = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        ours, theirs = sparse(ids).logits.float(), dense(ids).logits.float()
    tol = {"atol": 1e-4, "rtol": 1e-4} if dtype == "fp32" else {"atol": 5e-2, "rtol": 5e-2}
    torch.testing.assert_close(ours, theirs, **tol)  # prefill, 48 rows: tiled path, or the kernel (bf16, no BF16 dot)
    prompt = ids[:1, :8]
    greedy = {name: model.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)[0].tolist()
              for name, model in (("sparse", sparse), ("dense", dense))}  # decode: batch 1, the sparse kernel
    if dtype == "fp32":
        assert greedy["sparse"] == greedy["dense"]
    # every decode step (one row of x: the sparse kernel), teacher-forced on the dense model's tokens: bf16 greedy
    # may part ways at a near-tie of this random model, its logits may not
    steps = {name: decode_logits(model, greedy["dense"], prompt.shape[1]) for name, model in
             (("sparse", sparse), ("dense", dense))}
    assert steps["dense"].shape == (12, dense.config.vocab_size)
    torch.testing.assert_close(steps["sparse"], steps["dense"], **tol)
    assert_state_equal(sparse.state_dict(), dense.state_dict())  # saving unpacks the exact dense weights
