"""Sparse CPU linear kernels over the owl_sparse bitmask layout: ``y = x @ Wᵀ (+ bias)``.

One op, two entry points:

- ``sparse_linear(x, packed, bias=None)``: Python API over a :class:`PackedLinear`.
- ``torch.ops.owl.sparse_linear(x, bias, masks, values, row_offsets, out_features, in_features)``
  (also :func:`sparse_linear_op`): the raw custom op on plain tensors, with a fake impl, so
  ``torch.compile`` (vLLM) traces through it. Tensor order is ``pack.TENSOR_ORDER``.

Dispatch (see ``dispatch.py``): where ``runs_sparse_kernel`` (bf16: up to ``SPARSE_MAX_BATCH_BF16`` rows of ``x``
with AVX-512 BF16, every count without it; fp32: up to ``SPARSE_MAX_BATCH_FP32`` on AVX-512, ``SPARSE_MAX_BATCH``
on AVX2) → the C++ sparse kernel
(AVX-512 VBMI2+BF16 / AVX-512 VBMI2 / AVX-512F / AVX2 / portable, chosen from the CPU flags or forced
with ``OWL_SPARSE_ISA=avx512_bf16|avx512_vbmi2|avx512|avx2|portable|torch``); where ``runs_pair_kernel`` (bf16
on AVX-512 BF16 from ``PAIRS_MIN_BATCH`` rows, fp32 on AVX-512 above ``SPARSE_MAX_BATCH_FP32``: prefill, many
sequences) → the pair kernel, one ``vdpbf16ps`` per non-empty column pair of W, or one FMA per non-zero fp32
weight (``csrc/sparse_gemm_pairs.cpp``); other larger batches →
decompress tile by tile into a scratch buffer and run dense ``F.linear`` on each tile. No dense copy of W
stays resident on any path.

Example:
    >>> w = torch.randn(64, 96) * (torch.rand(64, 96) > 0.7)
    >>> packed = pack_dense(w)
    >>> y = sparse_linear(torch.randn(3, 96), packed)   # == x @ w.T
"""

from owl_plugin.kernels.dispatch import (
    PAIRS_MIN_BATCH,
    SPARSE_MAX_BATCH,
    SPARSE_MAX_BATCH_BF16,
    SPARSE_MAX_BATCH_FP32,
    kernel_info,
    runs_pair_kernel,
    runs_sparse_kernel,
    sparse_linear,
    sparse_linear_op,
)
from owl_plugin.kernels.pack import (
    TENSOR_ORDER,
    PackedLinear,
    SparseFormatError,
    SparseInputError,
    decompress_rows,
    pack_compact,
    pack_dense,
)
from owl_plugin.kernels.report import DENSE_ENV, dense_requested, sparse_layer_report

__all__ = [
    "DENSE_ENV",
    "PAIRS_MIN_BATCH",
    "SPARSE_MAX_BATCH",
    "SPARSE_MAX_BATCH_BF16",
    "SPARSE_MAX_BATCH_FP32",
    "TENSOR_ORDER",
    "PackedLinear",
    "SparseFormatError",
    "SparseInputError",
    "decompress_rows",
    "dense_requested",
    "kernel_info",
    "pack_compact",
    "pack_dense",
    "runs_pair_kernel",
    "runs_sparse_kernel",
    "sparse_layer_report",
    "sparse_linear",
    "sparse_linear_op",
]
