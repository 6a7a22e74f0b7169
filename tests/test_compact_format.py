"""The bitmask codec of SPEC.md: round trips, bit layout, and the exact errors for corrupted inputs."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from owl_plugin.formats.compact import (
    CompactFormatError,
    bitmask_length,
    check_compressed,
    compress,
    compressed_keys,
    decompress,
)

FIX = "the compact checkpoint is corrupt; export it again with `owl export MODEL --format compact`"
NAME = "model.layers.3.mlp.up_proj.weight"
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().reshape(-1).view(torch.uint8)


def _pruned(shape: tuple[int, int], dtype: torch.dtype, sparsity: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=generator)
    weight[torch.rand(shape, generator=generator) < sparsity] = 0.0
    return weight.to(dtype)


@settings(max_examples=40, deadline=None)
@given(out=st.integers(0, 33), inp=st.integers(0, 70), dtype=st.sampled_from(DTYPES),
       sparsity=st.sampled_from([0.0, 0.1, 0.5, 0.7, 0.95, 1.0]), seed=st.integers(0, 2**16))
def test_round_trip_is_bit_identical(out: int, inp: int, dtype: torch.dtype, sparsity: float, seed: int) -> None:
    weight = _pruned((out, inp), dtype, sparsity, seed)
    parts = compress(weight)
    nonzero = int((weight != 0).sum())
    assert parts["values"].dtype == dtype and parts["values"].shape == (nonzero,)
    assert parts["bitmask"].dtype == torch.uint8 and parts["bitmask"].numel() == math.ceil(out * inp / 8)
    assert parts["shape"].dtype == torch.int64 and parts["shape"].tolist() == [out, inp]
    unpacked = np.unpackbits(parts["bitmask"].numpy(), bitorder="little")
    assert not unpacked[out * inp:].any(), "padding bits must be zero"
    restored = decompress(parts["values"], parts["bitmask"], parts["shape"], name=NAME, expected_shape=(out, inp))
    assert restored.dtype == dtype and restored.shape == weight.shape
    assert torch.equal(_bits(restored), _bits(weight))


def test_bit_layout_matches_spec() -> None:
    # elements 1 and 8 are non-zero: bit 1 of byte 0, bit 0 of byte 1 (LSB first), 7 padding bits
    weight = torch.tensor([[0.0, 1.5, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, -2.0]])
    parts = compress(weight)
    assert parts["bitmask"].tolist() == [0b00000010, 0b00000001]
    assert parts["values"].tolist() == [1.5, -2.0]
    assert parts["shape"].tolist() == [3, 3]
    assert parts["bitmask"].tolist() == np.packbits(weight.reshape(-1).numpy() != 0, bitorder="little").tolist()
    assert compressed_keys("model.layers.0.mlp.up_proj") == {
        "values": "model.layers.0.mlp.up_proj.weight_values",
        "bitmask": "model.layers.0.mlp.up_proj.weight_bitmask",
        "shape": "model.layers.0.mlp.up_proj.weight_shape",
    }


def test_signed_zero_is_a_zero_and_nan_keeps_its_bits() -> None:
    nan = torch.tensor([0x7FC00123], dtype=torch.int32).view(torch.float32)  # a NaN with a payload
    weight = torch.cat([torch.tensor([-0.0, 0.0, float("inf"), 1.0]), nan]).reshape(1, 5)
    parts = compress(weight)
    assert parts["values"].numel() == 3  # -0.0 is not stored
    restored = decompress(**parts, name=NAME)
    assert _bits(restored[0, 0:1]).tolist() == _bits(torch.tensor([0.0])).tolist()  # comes back as +0.0
    assert torch.equal(_bits(restored[:, 1:]), _bits(weight[:, 1:]))


def _parts(dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    return compress(_pruned((6, 10), dtype, 0.7, seed=1))  # 60 elements: 8 bytes, 4 padding bits


def test_count_mismatch_names_the_tensor() -> None:
    parts = _parts()
    count = parts["values"].numel()
    with pytest.raises(CompactFormatError) as error:
        decompress(parts["values"][:-1], parts["bitmask"], parts["shape"], name=NAME)
    assert str(error.value) == (f"{NAME}: weight_bitmask marks {count} non-zero elements but weight_values holds "
                                f"{count - 1}; {FIX}")


def test_truncated_bitmask_names_the_tensor() -> None:
    parts = _parts()
    with pytest.raises(CompactFormatError) as error:
        decompress(parts["values"], parts["bitmask"][:-1], parts["shape"], name=NAME)
    assert str(error.value) == f"{NAME}: weight_bitmask is truncated: 7 bytes, expected 8 for shape [6, 10]; {FIX}"


def test_too_long_bitmask_names_the_tensor() -> None:
    parts = _parts()
    bitmask = torch.cat([parts["bitmask"], torch.zeros(1, dtype=torch.uint8)])
    with pytest.raises(CompactFormatError, match=re.escape(f"{NAME}: weight_bitmask is too long: 9 bytes, expected 8")):
        decompress(parts["values"], bitmask, parts["shape"], name=NAME)


def test_shape_that_does_not_fit_the_model_names_the_tensor() -> None:
    parts = _parts()
    with pytest.raises(CompactFormatError) as error:
        decompress(**parts, name=NAME, expected_shape=(10, 6))
    assert str(error.value) == (f"{NAME}: weight_shape is [6, 10] but the model expects [10, 6]; "
                                "the checkpoint does not belong to this model config")


def test_wrong_shape_tensor_names_the_tensor() -> None:
    parts = _parts()
    with pytest.raises(CompactFormatError) as error:
        decompress(parts["values"], parts["bitmask"], torch.tensor([6, 10, 1]), name=NAME)
    assert str(error.value) == (f"{NAME}: weight_shape must hold [out, in] (two non-negative int64), "
                                f"got [6, 10, 1]; {FIX}")


def test_nonzero_padding_bits_name_the_tensor() -> None:
    parts = _parts()
    bitmask = parts["bitmask"].clone()
    bitmask[-1] |= 0b10000000  # bit 63 of a 60-element weight
    with pytest.raises(CompactFormatError) as error:
        decompress(parts["values"], bitmask, parts["shape"], name=NAME)
    assert str(error.value) == f"{NAME}: weight_bitmask has non-zero padding bits after element 60; {FIX}"


@pytest.mark.parametrize(("part", "bad", "message"), [
    ("values", torch.zeros(3, dtype=torch.int8), "weight_values has dtype torch.int8, expected one of"),
    ("bitmask", torch.zeros(8, dtype=torch.int8), "weight_bitmask has dtype torch.int8, expected torch.uint8"),
    ("shape", torch.tensor([6, 10], dtype=torch.int32), "weight_shape has dtype torch.int32, expected torch.int64"),
    ("values", torch.zeros(2, 2), "weight_values must be 1-D, got shape [2, 2]"),
])
def test_wrong_dtypes_and_ranks_name_the_tensor(part: str, bad: torch.Tensor, message: str) -> None:
    parts = {**_parts(), part: bad}
    with pytest.raises(CompactFormatError, match=re.escape(f"{NAME}: {message}")):
        decompress(**parts, name=NAME)


def test_check_compressed_works_from_the_values_header() -> None:
    parts = _parts(torch.bfloat16)
    mask = check_compressed(torch.bfloat16, tuple(parts["values"].shape), parts["bitmask"], parts["shape"], name=NAME)
    assert mask.sum() == parts["values"].numel()
    with pytest.raises(CompactFormatError, match=re.escape(f"{NAME}: weight_values has dtype I8")):
        check_compressed("I8", (3,), parts["bitmask"], parts["shape"], name=NAME)


def test_compress_rejects_what_the_format_cannot_hold() -> None:
    with pytest.raises(ValueError, match=r"2-D \[out, in\] weight, got shape \(4,\)"):
        compress(torch.zeros(4))
    with pytest.raises(ValueError, match="cannot store dtype torch.float64"):
        compress(torch.zeros(2, 2, dtype=torch.float64))
    assert bitmask_length(0) == 0 and bitmask_length(9) == 2


def test_round_trips_a_7b_sized_linear() -> None:
    """A LLaMA-7B MLP weight (45 M values) round-trips bit-exactly (its speed is examples/benchmark_kernels.py's
    business: no timed tests)."""
    weight = _pruned((4096, 11008), torch.float32, 0.7, seed=0)
    parts = compress(weight)
    assert parts["bitmask"].numel() == 4096 * 11008 // 8
    restored = decompress(**parts, name=NAME, expected_shape=(4096, 11008))
    assert torch.equal(restored, weight)
