"""The loaders keep a layer dense where the sparse kernel measured slower than dense at batch 1.

``owl_plugin/kernels/fallback.py`` measures real calls (no timing is asserted here: the outcome of a
measurement depends on the CPU). What is asserted: which paths measure at all, that a measurement is two
positive times and their ratio, that the loader follows the decision layer by layer (the threshold is
moved to force each outcome), and that the validation check tells a measured fallback from a missing build.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from compact_helpers import tiny_llama

from owl_plugin.export import export_checkpoint
from owl_plugin.kernels import fallback, kernel_info, pack_dense
from owl_plugin.kernels.dispatch import cpu_supported_isas


def _weight(out_f: int = 96, in_f: int = 160, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    torch.manual_seed(0)
    return (torch.randn(out_f, in_f) * (torch.rand(out_f, in_f) > 0.7)).to(dtype)


@pytest.fixture(autouse=True)
def fresh_decisions(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(fallback, "_DECISIONS", {})


def test_a_bad_mode_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OWL_SPARSE_FALLBACK", "sometimes")
    w = _weight()
    with pytest.raises(ValueError, match="OWL_SPARSE_FALLBACK='sometimes': use one of measure, never, always"):
        fallback.keep_dense(w, pack_dense(w))


@pytest.mark.parametrize("value", ["fast", "-1", "nan"])
def test_a_bad_floor_is_named(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OWL_SPARSE_FALLBACK", "always")
    monkeypatch.setenv("OWL_SPARSE_MIN_SPEEDUP", value)
    w = _weight()
    with pytest.raises(ValueError, match=f"OWL_SPARSE_MIN_SPEEDUP='{value}': use a number >= 0"):
        fallback.keep_dense(w, pack_dense(w))


def test_avx512_paths_pack_without_measuring(monkeypatch: pytest.MonkeyPatch) -> None:
    if "avx512_bf16" not in cpu_supported_isas():
        pytest.skip(f"this CPU has no AVX-512 VBMI2+BF16 path (supported: {cpu_supported_isas()})")
    monkeypatch.setenv("OWL_SPARSE_FALLBACK", "measure")
    monkeypatch.delenv("OWL_SPARSE_ISA", raising=False)
    for dtype in (torch.float32, torch.bfloat16):  # the dtypes the kernels take
        w = _weight(dtype=dtype)
        assert fallback.keep_dense(w, pack_dense(w)) is None
    assert fallback.fallback_decisions() == []  # measured 1.5-2.7x there: nothing to decide
    w = _weight(dtype=torch.float16)  # no kernel takes float16 (the tiled path runs): measured on AVX-512 too
    decision = fallback.keep_dense(w, pack_dense(w))
    (measured,) = fallback.fallback_decisions()
    assert measured["dtype"] == "float16" and measured["isa"] == "avx512_bf16"
    assert (decision is not None) == (measured["speedup"] < fallback.min_speedup())


@pytest.mark.parametrize("mode", ["measure", "never"])
def test_avx2_path_measures_unless_told_never(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if "avx2" not in cpu_supported_isas():
        pytest.skip(f"this CPU has no AVX2 path (supported: {cpu_supported_isas()})")
    monkeypatch.setenv("OWL_SPARSE_ISA", "avx2")
    monkeypatch.setenv("OWL_SPARSE_FALLBACK", mode)
    w = _weight()
    packed = pack_dense(w)
    decision = fallback.keep_dense(w, packed)
    if mode == "never":
        assert decision is None and fallback.fallback_decisions() == []
        return
    (measured,) = fallback.fallback_decisions()
    assert measured["isa"] == "avx2" and measured["shape"] == [96, 160] and measured["dtype"] == "bfloat16"
    assert measured["dense_s"] > 0 and measured["sparse_s"] > 0
    assert measured["speedup"] == pytest.approx(measured["dense_s"] / measured["sparse_s"])
    assert fallback.min_speedup() == 0.95 and (decision is not None) == (measured["speedup"] < 0.95)
    fallback.keep_dense(w, packed)
    assert len(fallback.fallback_decisions()) == 1  # once per path, shape, dtype and density


@pytest.fixture(scope="module")
def compact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fallback")
    source = tiny_llama(root / "source", dtype=torch.bfloat16)
    export_checkpoint(source, root / "compact", format="compact")
    return root / "compact"


@pytest.mark.parametrize("threshold", [float("inf"), 0.0])
def test_transformers_loader_follows_the_measurement(compact: Path, threshold: float,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """threshold inf: every measured shape loses, every layer stays an exact dense nn.Linear; 0: all packed."""
    from transformers import AutoModelForCausalLM

    from owl_plugin.formats.compact_config import compressed_modules
    from owl_plugin.integrations.transformers.sparse_linear import OwlSparseLinear
    from owl_plugin.kernels.report import sparse_layer_report
    from owl_plugin.validation.checks import kernel_check
    from owl_plugin.validation.protocol import EngineResult

    listed = compressed_modules(json.loads((compact / "config.json").read_text())["quantization_config"])
    monkeypatch.setenv("OWL_SPARSE_DENSE", "1")
    dense = AutoModelForCausalLM.from_pretrained(compact)
    assert fallback.fallback_decisions() == []  # dense by request: nothing packed, nothing measured
    monkeypatch.setenv("OWL_SPARSE_DENSE", "0")
    monkeypatch.setenv("OWL_SPARSE_FALLBACK", "always")  # measure on this CPU's own path too
    monkeypatch.setenv("OWL_SPARSE_MIN_SPEEDUP", str(threshold))
    model = AutoModelForCausalLM.from_pretrained(compact)
    packed = {name for name, m in model.named_modules() if isinstance(m, OwlSparseLinear)}
    measured = fallback.fallback_decisions()
    assert {tuple(d["shape"]) for d in measured} == {tuple(dense.get_submodule(n).weight.shape) for n in listed}
    assert len(measured) < len(listed)  # measured once per shape and density, not per layer
    report = sparse_layer_report(model)
    result = EngineResult(engine="transformers")
    if threshold == 0.0:
        assert packed == set(listed) and kernel_info()["dense_fallback"] == []
        assert report["packed_layers"] == len(listed)
        return
    assert packed == set()
    assert kernel_info()["dense_fallback"] == measured and report == {"packed_layers": 0, "dense_fallback": measured}
    for name in listed:
        assert torch.equal(model.get_submodule(name).weight, dense.get_submodule(name).weight), name
    assert kernel_check(result, "kernel", report)  # a measured fallback passes, saying so
    assert "every layer stays dense" in result.checks[-1].detail
    twin = [{**d, "isa": "torch-fallback"} for d in report["dense_fallback"]]
    assert not kernel_check(result, "kernel", {"packed_layers": 0, "dense_fallback": twin})
    assert "python -m owl_plugin.kernels build -v" in result.checks[-1].detail
