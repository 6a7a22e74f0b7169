"""The bitmask codec of the compact sparse checkpoint format ("owl_sparse" v1, see SPEC.md).

A pruned 2-D weight becomes three tensors: its non-zero entries in row-major order
(``values``, the weight's dtype), one bit per element (``bitmask``, uint8, LSB first) and its
shape (``shape``, int64 ``[out, in]``). Both functions are pure (torch + numpy) and vectorised.

Zero means numerically zero: ``-0.0`` is stored as a zero and comes back as ``+0.0``, the
only bit-level change a round trip can make. NaN and inf are non-zero and kept bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import torch

VALUES_SUFFIX = "weight_values"
BITMASK_SUFFIX = "weight_bitmask"
SHAPE_SUFFIX = "weight_shape"
WEIGHT_SUFFIX = "weight"
VALUE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# the codec works on the raw bits: same-width integer views (numpy has no bfloat16)
_BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}
_FIX = "the compact checkpoint is corrupt; export it again with `owl export MODEL --format compact`"


class CompactFormatError(ValueError):
    """A compressed tensor (or its three parts) breaks the format's invariants."""


def compressed_keys(module: str) -> dict[str, str]:
    """The checkpoint keys that hold one compressed module.

    Args:
        module: full module name, e.g. ``"model.layers.0.self_attn.q_proj"``.

    Returns:
        ``{"values": "<module>.weight_values", "bitmask": ..., "shape": ...}``.
    """
    return {
        "values": f"{module}.{VALUES_SUFFIX}",
        "bitmask": f"{module}.{BITMASK_SUFFIX}",
        "shape": f"{module}.{SHAPE_SUFFIX}",
    }


def bitmask_length(numel: int) -> int:
    """Bytes of the bitmask of a weight with ``numel`` elements: ``ceil(numel / 8)``."""
    return math.ceil(numel / 8)


def compress(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """Encode a 2-D weight as its non-zero values, a bitmask and its shape.

    Args:
        weight: 2-D tensor of dtype float32, bfloat16 or float16 (any device; the result is on CPU).

    Returns:
        ``{"values": 1-D weight.dtype, "bitmask": 1-D uint8, "shape": int64 [out, in]}``.

    Raises:
        ValueError: the weight is not 2-D or its dtype is not one the format stores.
    """
    if weight.dim() != 2:
        raise ValueError(f"compress() takes a 2-D [out, in] weight, got shape {tuple(weight.shape)}; "
                         "only linear weights are stored compressed")
    if weight.dtype not in VALUE_DTYPES:
        raise ValueError(f"compress() cannot store dtype {weight.dtype}; the format holds {VALUE_DTYPES} "
                         "(cast the weight first)")
    bits = weight.detach().to("cpu").contiguous().reshape(-1).view(_BITS[weight.dtype]).numpy()
    mask = (bits << 1) != 0  # drop the sign bit: +0.0 and -0.0 are both zero
    values = np.take(bits, np.flatnonzero(mask))
    return {
        "values": torch.from_numpy(values).view(weight.dtype),
        "bitmask": torch.from_numpy(np.packbits(mask, bitorder="little")),
        "shape": torch.tensor(list(weight.shape), dtype=torch.int64),
    }


def check_compressed(
    values_dtype: torch.dtype | str,
    values_shape: tuple[int, ...],
    bitmask: torch.Tensor,
    shape: torch.Tensor,
    *,
    name: str,
    expected_shape: tuple[int, ...] | torch.Size | None = None,
) -> np.ndarray:
    """Check every invariant of SPEC.md that the values' header can answer (no need to read them).

    Args:
        values_dtype: dtype of ``weight_values`` (a torch dtype, or a safetensors name such as ``"I8"``).
        values_shape: shape of ``weight_values``.
        bitmask: the ``weight_bitmask`` tensor.
        shape: the ``weight_shape`` tensor.
        name: the weight's name, used in every error message.
        expected_shape: the shape the model expects for this weight, if known.

    Returns:
        The unpacked mask, a numpy bool array of ``out*in`` elements.

    Raises:
        CompactFormatError: naming ``name``, the broken invariant and the fix.
    """
    if values_dtype not in VALUE_DTYPES:
        raise CompactFormatError(f"{name}: {VALUES_SUFFIX} has dtype {values_dtype}, expected one of "
                                 f"{VALUE_DTYPES}; {_FIX}")
    if bitmask.dtype != torch.uint8:
        raise CompactFormatError(f"{name}: {BITMASK_SUFFIX} has dtype {bitmask.dtype}, expected torch.uint8; {_FIX}")
    if shape.dtype != torch.int64:
        raise CompactFormatError(f"{name}: {SHAPE_SUFFIX} has dtype {shape.dtype}, expected torch.int64; {_FIX}")
    for part, part_shape in ((VALUES_SUFFIX, tuple(values_shape)), (BITMASK_SUFFIX, tuple(bitmask.shape))):
        if len(part_shape) != 1:
            raise CompactFormatError(f"{name}: {part} must be 1-D, got shape {list(part_shape)}; {_FIX}")
    dims = shape.tolist()
    if shape.dim() != 1 or len(dims) != 2 or min(dims) < 0:
        raise CompactFormatError(f"{name}: {SHAPE_SUFFIX} must hold [out, in] (two non-negative int64), "
                                 f"got {dims}; {_FIX}")
    if expected_shape is not None and dims != list(expected_shape):
        raise CompactFormatError(f"{name}: {SHAPE_SUFFIX} is {dims} but the model expects {list(expected_shape)}; "
                                 "the checkpoint does not belong to this model config")
    numel = dims[0] * dims[1]
    expected_bytes = bitmask_length(numel)
    if bitmask.numel() != expected_bytes:
        problem = "truncated" if bitmask.numel() < expected_bytes else "too long"
        raise CompactFormatError(f"{name}: {BITMASK_SUFFIX} is {problem}: {bitmask.numel()} bytes, expected "
                                 f"{expected_bytes} for shape {dims}; {_FIX}")
    bits = np.unpackbits(bitmask.detach().to("cpu").contiguous().numpy(), bitorder="little")
    if bits[numel:].any():
        raise CompactFormatError(f"{name}: {BITMASK_SUFFIX} has non-zero padding bits after element {numel}; {_FIX}")
    mask = bits[:numel].view(np.bool_)  # a bool view is ~4x faster to scan than uint8
    count = int(np.count_nonzero(mask))
    if count != values_shape[0]:
        raise CompactFormatError(f"{name}: {BITMASK_SUFFIX} marks {count} non-zero elements but {VALUES_SUFFIX} "
                                 f"holds {values_shape[0]}; {_FIX}")
    return mask


def decompress(
    values: torch.Tensor,
    bitmask: torch.Tensor,
    shape: torch.Tensor,
    *,
    name: str,
    expected_shape: tuple[int, ...] | torch.Size | None = None,
) -> torch.Tensor:
    """Rebuild the dense weight, checking every invariant of SPEC.md first.

    Args:
        values: 1-D non-zero entries (float32, bfloat16 or float16).
        bitmask: 1-D uint8, ``ceil(out*in/8)`` bytes, bit k of byte b set iff element 8b+k is non-zero.
        shape: int64 ``[out, in]``.
        name: the weight's name, used in every error message.
        expected_shape: the shape the model expects for this weight, if known.

    Returns:
        The dense ``[out, in]`` tensor in the dtype of ``values`` (on CPU).

    Raises:
        CompactFormatError: wrong dtypes, wrong shape, bitmask too short or too long, padding
            bits set, or a number of set bits different from the number of values.
    """
    mask = check_compressed(values.dtype, tuple(values.shape), bitmask, shape, name=name,
                            expected_shape=expected_shape)
    integer = _BITS[values.dtype]
    dense = np.zeros(mask.size, dtype=torch.empty(0, dtype=integer).numpy().dtype)
    dense[np.flatnonzero(mask)] = values.detach().to("cpu").contiguous().view(integer).numpy()
    out_features, in_features = shape.tolist()
    return torch.from_numpy(dense).view(values.dtype).reshape(out_features, in_features)


def compressed_nbytes(parts: dict[str, torch.Tensor]) -> int:
    """Bytes the three tensors of one compressed weight occupy (values + bitmask + shape)."""
    return sum(t.numel() * t.element_size() for t in parts.values())
