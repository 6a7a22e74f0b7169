"""The ``owl::sparse_linear`` custom op: path choice (ISA, batch threshold) and the tiled dense path."""

from __future__ import annotations

import os
import threading

import torch
import torch.nn.functional as F

from owl_plugin.kernels.build import _STATE, load_extension
from owl_plugin.kernels.fallback import kept_dense
from owl_plugin.kernels.pack import BLOCK, PackedLinear, SparseInputError

# Rows of x that go to the sparse kernel (runs_sparse_kernel); more go to the pair kernel or to tiled decompress +
# dense F.linear. Measured with examples/benchmark_kernels.py (its "dispatch threshold" line):
# - bf16 on AVX-512 BF16 (AMD EPYC): up to 24 rows (SPARSE_MAX_BATCH_BF16). 2026-12-07, 2 threads (how the engines
#   run here), 70%, weights streamed, 2560x2048 to 11008x4096 (examples/results/kernels_midbatch_17_47.md): the
#   kernel over the tiled path 1.05-1.13x at 17 rows, 1.04-1.30x at 20, 1.02-1.21x at 24, 0.98-1.08x at 28,
#   0.91-1.03x at 33; the pair kernel lost to both below 28. (2026-12-05, before the 8-row pass: 16.)
# - fp32 on the AVX-512 paths: up to 21 rows. The kernel beat the tiled path in every measured row up to 32 (EPYC,
#   2026-12-04: 1.10-1.86× of torch at 32 rows, tiled 0.15-0.89×; Intel Xeon without AVX-512 BF16, 2026-12-06:
#   0.72-1.02× of vLLM's oneDNN at 17-32 rows, tiled 0.45-0.68×) and lost to it from 64 on the Xeon. On the AVX2
#   path (forced on the Xeon, one core) it lost to tiled from 24 rows (0.38-0.75× of torch vs 0.53-0.88×): 16 there.
#   Since 2026-12-06 the fp32 pair kernel (one FMA per non-zero weight) takes over above 21 rows on AVX-512: EPYC,
#   one core, 70%, SmolLM2 and 2048x5632/5632x2048 shapes, speed-up of the pair kernel over the sparse kernel at 17
#   rows 0.90-1.02×, at 20 0.93-1.10×, at 22 1.05-1.24×, at 24 1.01-1.31×, at 32 1.34-1.71×.
# - bf16 without a native bf16 dot (the AVX-512 VBMI2, AVX-512F and AVX2 paths): every count. There every dense bf16
#   GEMM (torch's, vLLM's oneDNN) widens to fp32 as the kernel does, on all the weights: on the Xeon the kernel ran
#   at 1.53-2.65× of the better of them from 17 to 512 rows (AVX2 forced: 1.20-1.85×), the tiled path 0.84-1.07×.
SPARSE_MAX_BATCH = 16  # AVX2 and portable (fp32; bf16 on portable)
SPARSE_MAX_BATCH_BF16 = 24
SPARSE_MAX_BATCH_FP32 = 21
# The pair kernel (csrc/sparse_gemm_pairs.cpp) instead of the tiled path, bf16 weights on AVX-512 BF16: see
# runs_pair_kernel. It pays a fixed cost per call (its pair lists: about one tiled decompression plus one 16-row
# pass) and then a step per 16 rows of x (a partial group costs a whole one), while the tiled path grows with
# every row. Measured pairs vs tiled (examples/benchmark_kernels.py, 1 thread, 70%, bf16, 5 shapes from 576x1536
# to 11008x4096, 2026-12-06): 32 rows 0.87-1.0x, 40 0.90-0.99x, 48 1.04-1.18x, 49 0.89-0.97x, 64 1.11-1.30x,
# 65 0.83-0.91x, 80 1.04-1.12x, 81 0.97-1.02x, 97-200 (97, 113, 129, 145, 161, 200) 1.02-1.22x.
# fp32 weights on any AVX-512 path run it at every count above SPARSE_MAX_BATCH_FP32: one FMA per non-zero weight
# and 16 rows of x, against one per weight in a dense fp32 GEMM. Against the tiled path (EPYC, one core, 70%,
# 960x576 to 5632x2048): 33 rows 1.27-1.87×, 64 1.76-2.14×, 128 1.80-2.38×, 512 1.61-2.36×.
# 2026-12-07: building the pair lists by table permute instead of vpcompressq (sparse_gemm_pairs.cpp) made the
# bf16 pair kernel faster (old and new builds alternated, 1 thread, weights streamed, 70%, 2560x2048, 2048x5632,
# 11008x4096: vLLM's oneDNN / pairs 0.66-0.86× → 0.69-0.95× at 32 and 48 rows). With it, at 2 threads (as above,
# examples/results/kernels_midbatch*.md) the pair kernel beat the tiled path in every row at 32, 40, 47, 48, 64,
# 81 and 128 rows (1.02-1.93×), at 65 in 3 of 5 (1.08-1.37×, two 0.96×) and lost at 33 (0.92-0.97×: a partial
# group): so from 32 rows at whole groups of 16, and any count above 64.
PAIRS_MIN_BATCH = 32
# scratch tile of the dense path: about this many bytes of dense weight at a time (8 MB measured best
# of 2/8/32 MB in examples/benchmark_kernels.py's shapes: small tiles pay per-GEMM overhead, large ones
# leave the cache)
TILE_BYTES = 1 << 23
_SCRATCH = threading.local()  # one reused tile per thread and dtype: a fresh one costs page faults per call

# the C++ paths (csrc/sparse_linear.cpp's isa numbers); each needs cpu_features() bit _ISA_FEATURE_BIT[name]
ISAS = {"portable": 0, "avx2": 1, "avx512": 2, "avx512_vbmi2": 3, "avx512_bf16": 4}
_ISA_FEATURE_BIT = {"avx2": 1, "avx512": 2, "avx512_vbmi2": 8, "avx512_bf16": 4}


class SparseKernelUnavailable(RuntimeError):
    """OWL_SPARSE_ISA asks for a path this CPU (or this build) cannot run."""


def cpu_supported_isas() -> list[str]:
    """The C++ paths this CPU can run, best first ([] when the extension is unavailable)."""
    ext = load_extension()
    if ext is None:
        return []
    if "features" not in _STATE:
        _STATE["features"] = int(ext.cpu_features())
    feats = int(_STATE["features"])  # type: ignore[arg-type]
    paths = ("avx512_bf16", "avx512_vbmi2", "avx512", "avx2")
    return [name for name in paths if feats & _ISA_FEATURE_BIT[name]] + ["portable"]


def selected_isa() -> str:
    """The path in use: OWL_SPARSE_ISA if set (checked against the CPU), else the best supported.

    Raises:
        SparseKernelUnavailable: OWL_SPARSE_ISA names no path, or one this CPU lacks.
    """
    forced = os.environ.get("OWL_SPARSE_ISA", "").strip().lower()
    supported = cpu_supported_isas()
    if forced == "torch" or not supported:
        return "torch-fallback"
    if forced:
        if forced not in ISAS:
            raise SparseKernelUnavailable(
                f"OWL_SPARSE_ISA={forced!r} is not a path; allowed: {sorted(ISAS)} or 'torch'")
        if forced not in supported:
            raise SparseKernelUnavailable(f"OWL_SPARSE_ISA={forced!r} but this CPU supports only {supported}")
        return forced
    return supported[0]


def sparse_kernel_max_rows(isa: str, dtype: torch.dtype) -> int | None:
    """Rows of x up to which ``dtype`` weights run the sparse kernel on path ``isa`` (None: every count, 0: never),
    from the measurements above. sparse_linear.cpp's ``runs_sparse_kernel`` is the same rule."""
    if dtype not in (torch.float32, torch.bfloat16) or isa == "torch-fallback":
        return 0
    if dtype == torch.bfloat16 and isa in ("avx2", "avx512", "avx512_vbmi2"):
        return None
    if dtype == torch.bfloat16 and isa == "avx512_bf16":
        return SPARSE_MAX_BATCH_BF16
    return SPARSE_MAX_BATCH_FP32 if dtype == torch.float32 and isa.startswith("avx512") else SPARSE_MAX_BATCH


def runs_sparse_kernel(rows: int, isa: str, dtype: torch.dtype) -> bool:
    """Whether ``rows`` rows of x with ``dtype`` weights go to the sparse kernel on path ``isa``."""
    limit = sparse_kernel_max_rows(isa, dtype)
    return rows > 0 and (limit is None or rows <= limit)


def runs_pair_kernel(rows: int, isa: str = "avx512_bf16", dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether ``rows`` rows of x with ``dtype`` weights go to the pair kernel on path ``isa``: bf16 on AVX-512 BF16
    from ``PAIRS_MIN_BATCH`` rows at whole groups of 16, and from twice that at any count; fp32 on any AVX-512 path
    above ``SPARSE_MAX_BATCH_FP32``; below, elsewhere and for other dtypes the sparse kernel or the tiled path is
    faster (the measurements above). sparse_linear.cpp's ``runs_pair_kernel`` is the same rule."""
    if dtype == torch.float32:
        return isa.startswith("avx512") and rows > SPARSE_MAX_BATCH_FP32
    return (dtype == torch.bfloat16 and isa == "avx512_bf16" and rows >= PAIRS_MIN_BATCH
            and (rows % 16 == 0 or rows > 2 * PAIRS_MIN_BATCH))


def pair_kernel_min_rows(isa: str, dtype: torch.dtype) -> int | None:
    """Fewest rows of x that can run the pair kernel for ``dtype`` weights on ``isa`` (None: never)."""
    if dtype == torch.float32 and isa.startswith("avx512"):
        return SPARSE_MAX_BATCH_FP32 + 1
    return PAIRS_MIN_BATCH if dtype == torch.bfloat16 and isa == "avx512_bf16" else None


def kernel_info() -> dict:
    """Which path runs: ``{"isa", "op", "threads", "extension", "sparse_max_batch", "pairs_min_batch",
    "dense_fallback"}`` (``sparse_max_batch``: rows of x up to which the sparse kernel runs, per weight dtype, None
    for every count; ``pairs_min_batch``: fewest rows that can run the pair kernel, per weight dtype, None where it
    cannot run; ``dense_fallback``: the batch-1 measurements that kept layers of a shape dense, see fallback.py)."""
    isa = selected_isa()
    return {
        "isa": isa,
        "op": "owl::sparse_linear",
        "threads": torch.get_num_threads(),
        "extension": _STATE.get("path"),
        "extension_error": _STATE.get("error"),
        "sparse_max_batch": {str(dtype).removeprefix("torch."): sparse_kernel_max_rows(isa, dtype)
                             for dtype in (torch.bfloat16, torch.float32)},
        "pairs_min_batch": {str(dtype).removeprefix("torch."): pair_kernel_min_rows(isa, dtype)
                            for dtype in (torch.bfloat16, torch.float32)},
        "dense_fallback": kept_dense(),
    }


def _check(x, bias, masks, values, row_offsets, out_features: int, in_features: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise SparseInputError(f"x must be a tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[-1] != in_features:
        raise SparseInputError(f"x must have shape [..., {in_features}], got {tuple(x.shape)}")
    if x.dtype != values.dtype:
        raise SparseInputError(f"x dtype {x.dtype} differs from the weight dtype {values.dtype}; cast x first")
    if not x.is_contiguous():
        raise SparseInputError(
            f"x must be contiguous (shape {tuple(x.shape)}, strides {x.stride()}); call .contiguous()")
    if x.device.type != "cpu":
        raise SparseInputError(f"x must be on CPU, got {x.device}")
    if bias is not None and (bias.shape != (out_features,) or bias.dtype != x.dtype):
        raise SparseInputError(
            f"bias must be [{out_features}] {x.dtype}, got {tuple(bias.shape)} {bias.dtype}")
    nblk = (in_features + BLOCK - 1) // BLOCK
    if masks.dtype != torch.int32 or tuple(masks.shape) != (out_features, nblk):
        raise SparseInputError(f"masks must be int32 [{out_features}, {nblk}], got {masks.dtype} {tuple(masks.shape)}")
    if row_offsets.dtype != torch.int64 or row_offsets.numel() != out_features + 1:
        raise SparseInputError(f"row_offsets must be int64 [{out_features + 1}], got {row_offsets.dtype} "
                               f"{tuple(row_offsets.shape)}")


def _tile_torch(masks, values, row_offsets, r0: int, r1: int, in_features: int) -> torch.Tensor:
    bits = (masks[r0:r1].unsqueeze(-1) >> torch.arange(BLOCK, dtype=torch.int32)) & 1
    mask = bits.reshape(r1 - r0, -1)[:, :in_features].bool()
    dense = torch.zeros(r1 - r0, in_features, dtype=values.dtype)
    dense[mask] = values[int(row_offsets[r0]): int(row_offsets[r1])]
    return dense


def _scratch(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """A reused flat buffer of at least ``numel`` elements of ``dtype`` for this thread."""
    buffers = getattr(_SCRATCH, "buffers", None)
    if buffers is None:
        buffers = _SCRATCH.buffers = {}
    buffer = buffers.get(dtype)
    if buffer is None or buffer.numel() < numel:
        buffer = buffers[dtype] = torch.empty(numel, dtype=dtype)
    return buffer[:numel]


def _tiled_dense(x2, masks, values, row_offsets, out_features: int, in_features: int, ext,
                 isa: str = "portable") -> torch.Tensor:
    """y = x W^T by decompressing ``TILE_BYTES`` of W at a time into one scratch tile."""
    rows = max(1, min(out_features, TILE_BYTES // max(1, in_features * values.element_size())))
    y = torch.empty(x2.shape[0], out_features, dtype=x2.dtype)
    scratch = _scratch(rows * in_features, values.dtype).view(rows, in_features) if ext is not None else None
    for r0 in range(0, out_features, rows):
        r1 = min(out_features, r0 + rows)
        if ext is not None:
            torch.ops.owl_ext.decompress_rows_into(masks, values, row_offsets, r0, r1, scratch, ISAS[isa])
            tile = scratch[: r1 - r0]
        else:
            tile = _tile_torch(masks, values, row_offsets, r0, r1, in_features)
        y[:, r0:r1] = F.linear(x2, tile)
    return y


@torch.library.custom_op("owl::sparse_linear", mutates_args=())
def sparse_linear_op(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    masks: torch.Tensor,
    values: torch.Tensor,
    row_offsets: torch.Tensor,
    out_features: int,
    in_features: int,
) -> torch.Tensor:
    """Raw op ``torch.ops.owl.sparse_linear``: ``y[..., out] = x[..., in] @ Wᵀ (+ bias)``.

    Args:
        x: ``[..., in_features]``, contiguous, same dtype as ``values`` (float32 / bfloat16 / float16).
        bias: ``[out_features]`` or None.
        masks, values, row_offsets: ``PackedLinear.tensors`` in ``TENSOR_ORDER`` (see pack.py).
    Raises:
        SparseInputError: bad x / bias / packed tensors, naming the bad value.
    """
    _check(x, bias, masks, values, row_offsets, out_features, in_features)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, in_features)
    isa = selected_isa()
    ext = load_extension() if isa != "torch-fallback" else None
    if ext is not None and runs_sparse_kernel(x2.shape[0], isa, values.dtype):
        y = torch.ops.owl_ext.sparse_gemm(x2, masks, values, row_offsets, out_features, in_features, ISAS[isa])
    elif ext is not None and runs_pair_kernel(x2.shape[0], isa, values.dtype):
        y = torch.ops.owl_ext.sparse_gemm_pairs(x2, masks, values, row_offsets, out_features, in_features)
    else:
        y = _tiled_dense(x2, masks, values, row_offsets, out_features, in_features, ext, isa)
    if bias is not None:
        y = y + bias
    return y.reshape(*lead, out_features)


@sparse_linear_op.register_fake
def _(x, bias, masks, values, row_offsets, out_features, in_features):
    return x.new_empty((*x.shape[:-1], out_features))


_CHECKED_ENV: dict[str, object] = {}  # OWL_SPARSE_ISA value → the compiled extension (or None: torch twin)


def compiled_extension():
    """The compiled extension when a C++ path runs, or None for the pure-torch twin (no compiler, or
    ``OWL_SPARSE_ISA=torch``). ``OWL_SPARSE_ISA`` is validated once per value (eagerly); while
    ``torch.compile`` traces, the extension loaded in eager mode is used as it is."""
    if torch.compiler.is_compiling():
        return _STATE.get("module")
    forced = os.environ.get("OWL_SPARSE_ISA", "")
    if forced not in _CHECKED_ENV:
        isa = selected_isa()  # raises SparseKernelUnavailable naming a bad value
        _CHECKED_ENV[forced] = None if isa == "torch-fallback" else load_extension()
    return _CHECKED_ENV[forced]


def sparse_linear(x: torch.Tensor, packed: PackedLinear, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``y = x @ Wᵀ (+ bias)`` for ``x`` of shape ``[..., in_features]`` and the packed sparse ``W``.

    Same numbers as ``F.linear(x, W, bias)`` up to fp32 accumulation order (bf16 inputs are
    accumulated in fp32 and rounded once). With the compiled extension the whole call runs in C++
    (``torch.ops.owl_ext.sparse_linear``: path choice, batch threshold, tiled dense path, bias), so
    a decode step pays no Python per layer beyond this function; without it, the pure-torch twin.
    """
    if not isinstance(packed, PackedLinear):
        raise SparseInputError(f"packed must be a PackedLinear (use pack_dense / pack_compact), got {type(packed)}")
    tensors = packed.ordered()
    if compiled_extension() is None:
        return sparse_linear_op(x, bias, *tensors, packed.out_features, packed.in_features)
    _check(x, bias, *tensors, packed.out_features, packed.in_features)
    return torch.ops.owl_ext.sparse_linear(x, bias, *tensors, packed.out_features, packed.in_features,
                                           SPARSE_MAX_BATCH, SPARSE_MAX_BATCH_BF16, SPARSE_MAX_BATCH_FP32,
                                           PAIRS_MIN_BATCH, TILE_BYTES)
