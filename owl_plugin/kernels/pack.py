"""Compact sparse pieces ⇄ the kernel's in-memory layout (pure torch, no extension needed).

Layout of one ``[out, in]`` weight ``W`` (``nblk = ceil(in / 32)`` column blocks of 32):

- ``masks``       int32 ``[out, nblk]``; bit ``j`` of ``masks[r, k]`` is 1 iff ``W[r, 32k + j] != 0``
  (``-0.0`` counts as zero, as in the owl_sparse format, owl_plugin/formats/SPEC.md).
- ``values``      dtype D, 1-D, the non-zeros of ``W`` in row-major order followed by ``PAD`` zeros, so a
  kernel may load a whole vector (up to 32 elements) past the last non-zero of a row without
  leaving the buffer.
- ``row_offsets`` int64 ``[out + 1]``; row ``r``'s values are ``values[row_offsets[r]:row_offsets[r+1]]``.

The kernels walk a row block by block: the values of block ``k`` start at
``row_offsets[r] + sum(popcount(masks[r, :k]))``; several rows are walked at once so those
running sums are independent chains.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

import numpy as np
import torch

BLOCK = 32
PAD = 32
TENSOR_ORDER = ("masks", "values", "row_offsets")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_SAME_SIZE_INT = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}
_POPCOUNT = torch.tensor([bin(byte).count("1") for byte in range(256)], dtype=torch.int64)  # set bits per byte


class SparseFormatError(ValueError):
    """The sparse pieces disagree (popcount ≠ numel, wrong length, padding bits, wrong dtype/shape)."""


class SparseInputError(ValueError):
    """The activation ``x`` (or bias) given to a sparse linear is unusable (dtype, shape, layout)."""


@dataclass(frozen=True)
class PackedLinear:
    """The kernel's in-memory layout of one sparse ``[out, in]`` weight.

    Attributes:
        tensors: ``{"masks", "values", "row_offsets"}`` (see module docstring), plain tensors that a
            layer may register as buffers; ``TENSOR_ORDER`` is the order the raw op takes them in.
        out_features, in_features: the dense shape ``[out, in]``.
        dtype: the weight dtype (float32, bfloat16 or float16).
    """

    tensors: dict[str, torch.Tensor]
    out_features: int
    in_features: int
    dtype: torch.dtype

    def nbytes(self) -> int:
        """Bytes held by the packed tensors (what stays resident instead of the dense weight)."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    @property
    def nnz(self) -> int:
        """Number of stored non-zero weights."""
        return int(self.tensors["row_offsets"][-1])

    def ordered(self) -> tuple[torch.Tensor, ...]:
        """The tensors in ``TENSOR_ORDER`` (the raw op's positional order)."""
        return tuple(self.tensors[k] for k in TENSOR_ORDER)

    def with_tensors(self, tensors: dict[str, torch.Tensor]) -> PackedLinear:
        """The same matrix over other copies of its tensors (a module's buffers after ``.to(dtype)``)."""
        return replace(self, tensors=dict(tensors), dtype=tensors["values"].dtype)


def _pack_from_mask(mask: torch.Tensor, values: torch.Tensor) -> PackedLinear:
    """Build the layout from a bool ``[out, in]`` mask and its row-major non-zeros ``values``."""
    out_f, in_f = mask.shape
    nblk = (in_f + BLOCK - 1) // BLOCK
    padded = torch.zeros(out_f, nblk * BLOCK, dtype=torch.bool)
    padded[:, :in_f] = mask
    # bit j of word k = column 32k + j: little-endian bytes of 8 columns each, read as little-endian int32
    packed_bits = np.packbits(padded.numpy(), axis=1, bitorder="little")
    words = torch.from_numpy(packed_bits.view("<i4").astype(np.int32))
    counts = _POPCOUNT[torch.from_numpy(packed_bits).long()].sum(1)
    return _layout(words.contiguous(), counts, values, in_f)


def _layout(masks: torch.Tensor, counts: torch.Tensor, values: torch.Tensor, in_f: int) -> PackedLinear:
    """The layout from its ``[out, nblk]`` mask words, the non-zeros per row and the row-major non-zeros."""
    row_offsets = torch.zeros(masks.shape[0] + 1, dtype=torch.int64)
    row_offsets[1:] = torch.cumsum(counts, 0)
    vals = torch.zeros(values.numel() + PAD, dtype=values.dtype)
    vals[: values.numel()] = values.detach().to("cpu").reshape(-1)
    tensors = {"masks": masks, "values": vals, "row_offsets": row_offsets}
    return PackedLinear(tensors=tensors, out_features=masks.shape[0], in_features=in_f, dtype=values.dtype)


def pack_dense(weight: torch.Tensor) -> PackedLinear:
    """Pack a dense 2-D ``[out, in]`` weight whose zeros are the pruned entries.

    Args:
        weight: float32 / bfloat16 / float16, 2-D, on CPU.

    Returns:
        The packed layout; ``decompress(pack_dense(w)) == w`` (``-0.0`` becomes ``+0.0``).

    Example:
        >>> packed = pack_dense(torch.tensor([[0.0, 2.0], [3.0, 0.0]]))
        >>> packed.nnz
        2
    """
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise SparseFormatError(f"weight must be a 2-D [out, in] tensor, got {getattr(weight, 'shape', type(weight))}")
    if weight.dtype not in DTYPES:
        raise SparseFormatError(f"weight dtype {weight.dtype} is not supported; allowed: {DTYPES}")
    w = weight.detach().to("cpu").contiguous()
    mask = w != 0
    bits = _SAME_SIZE_INT[w.dtype]  # numpy has no bfloat16: select the non-zeros as integers of the same width
    values = np.compress(mask.numpy().reshape(-1), w.view(bits).numpy().reshape(-1))
    return _pack_from_mask(mask, torch.from_numpy(values).view(w.dtype))


def pack_compact(values: torch.Tensor, bitmask: torch.Tensor, shape) -> PackedLinear:
    """Pack the owl_sparse checkpoint pieces (``weight_values``, ``weight_bitmask``, ``weight_shape``).

    Args:
        values: 1-D non-zeros in row-major order (float32 / bfloat16 / float16).
        bitmask: 1-D uint8, ``ceil(out*in/8)`` bytes, little-endian bit order (SPEC.md).
        shape: ``[out, in]`` (tensor, tuple or list).

    Raises:
        SparseFormatError: naming the disagreeing piece (popcount ≠ numel(values), bitmask length,
            non-zero padding bits, dtype, shape).
    """
    shape_t = [int(s) for s in (shape.tolist() if isinstance(shape, torch.Tensor) else shape)]
    if len(shape_t) != 2 or min(shape_t) <= 0:
        raise SparseFormatError(f"shape must be [out, in] with positive sizes, got {shape_t}")
    out_f, in_f = shape_t
    if values.dtype not in DTYPES:
        raise SparseFormatError(f"values dtype {values.dtype} is not supported; allowed: {DTYPES}")
    if bitmask.dtype != torch.uint8 or bitmask.dim() != 1:
        raise SparseFormatError(f"bitmask must be 1-D uint8, got dtype {bitmask.dtype}, shape {tuple(bitmask.shape)}")
    n = out_f * in_f
    if bitmask.numel() != (n + 7) // 8:
        raise SparseFormatError(
            f"bitmask has {bitmask.numel()} bytes, shape {shape_t} needs ceil({n}/8) = {(n + 7) // 8}")
    if in_f % BLOCK == 0 and sys.byteorder == "little":
        return _pack_aligned(values, bitmask, out_f, in_f)
    bits = ((bitmask.to(torch.int32).unsqueeze(1) >> torch.arange(8, dtype=torch.int32)) & 1).reshape(-1).bool()
    if bool(bits[n:].any()):
        raise SparseFormatError("bitmask padding bits (after out*in) must be 0")
    mask = bits[:n].view(out_f, in_f)
    nnz = int(mask.sum())
    if nnz != values.numel():
        raise SparseFormatError(f"popcount(bitmask) = {nnz} but values has {values.numel()} elements")
    return _pack_from_mask(mask, values.detach().to("cpu").reshape(-1))


def _pack_aligned(values: torch.Tensor, bitmask: torch.Tensor, out_f: int, in_f: int) -> PackedLinear:
    """``pack_compact`` when every row fills whole 32-bit blocks (``in % 32 == 0``, no padding bits): the
    format's little-endian bitmask of row ``r`` *is* that row's ``masks`` words, read as int32 on a
    little-endian CPU, so nothing is unpacked to one byte per weight (about 10× faster than the general path
    on a 5632 × 2048 weight)."""
    masks = bitmask.detach().to("cpu").clone().view(torch.int32).view(out_f, in_f // BLOCK)
    counts = _POPCOUNT[bitmask.to("cpu").long()].view(out_f, in_f // 8).sum(1)
    nnz = int(counts.sum())
    if nnz != values.numel():
        raise SparseFormatError(f"popcount(bitmask) = {nnz} but values has {values.numel()} elements")
    return _layout(masks, counts, values, in_f)


def decompress_rows(packed: PackedLinear, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Dense rows ``W[start:stop]`` rebuilt from the packed layout (pure torch twin of the C++ one)."""
    stop = packed.out_features if stop is None else stop
    masks = packed.tensors["masks"][start:stop]
    bits = (masks.unsqueeze(-1) >> torch.arange(BLOCK, dtype=torch.int32)) & 1
    mask = bits.reshape(stop - start, -1)[:, : packed.in_features].bool()
    offs = packed.tensors["row_offsets"]
    dense = torch.zeros(stop - start, packed.in_features, dtype=packed.dtype)
    dense[mask] = packed.tensors["values"][int(offs[start]): int(offs[stop])]
    return dense
