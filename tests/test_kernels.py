"""owl_plugin.kernels: the packed layout and every compiled path compute ``x @ Wᵀ (+ b)`` of the dense weight.

Each C++ path (AVX-512 VBMI2+BF16, AVX-512F, AVX2, portable) is forced with ``OWL_SPARSE_ISA`` and
compared with ``F.linear`` on the dense weight, over shapes that hit every edge of the layout (``in``
not a multiple of 32, all-zero rows, fully dense rows, fewer rows than the 4 walked at once), every
batch chunking (1-4 rows per pass, up to 8 on the VBMI2+BF16 path, the sparse/tiled threshold) and both
dtypes. Paths the CPU lacks are skipped with the reason; the pure-torch twin runs everywhere.

Out-of-bounds reads are checked by running this file once under AddressSanitizer (2026-12-05, after the
AVX2 vpshufb paths, the 8-row bf16 pass and the prefetch: 84 passed, no report, AVX-512 machine, every
path forced; again after the prefill pair kernel: 88 passed, no report; 2026-12-06, after its partial last
block and its dispatch rule: 92 passed, no report; 2026-12-06 on an Intel Xeon without AVX-512 BF16, after the
AVX-512 VBMI2 path and the every-batch bf16 rule: 89 passed, 20 skipped (the BF16 path), no report; 2026-12-06
on AMD EPYC, after the fp32 pair kernel: 115 passed, no report),
with the extension built instrumented into its own cache folder:

    OWL_PLUGIN_CACHE=/tmp/asan-cache OWL_SPARSE_ASAN=1 ASAN_OPTIONS=detect_leaks=0 \
    LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so.6)" \
    .venv/bin/python -m pytest tests/test_kernels.py -p no:cacheprovider
"""

from __future__ import annotations

import os
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from owl_plugin.formats.compact import compress
from owl_plugin.kernels import (
    PAIRS_MIN_BATCH,
    SPARSE_MAX_BATCH,
    SPARSE_MAX_BATCH_BF16,
    SPARSE_MAX_BATCH_FP32,
    SparseFormatError,
    SparseInputError,
    decompress_rows,
    kernel_info,
    pack_compact,
    pack_dense,
    runs_pair_kernel,
    runs_sparse_kernel,
    sparse_linear,
)
from owl_plugin.kernels.build import load_extension
from owl_plugin.kernels.dispatch import ISAS, SparseKernelUnavailable, cpu_supported_isas, selected_isa

COMPILED = ("avx512_bf16", "avx512_vbmi2", "avx512", "avx2", "portable")
SHAPES = [(1, 1), (3, 31), (7, 33), (64, 96), (130, 257)]  # (out, in)
# ... PAIRS_MIN_BATCH + 5: tiled (a partial group of 16; bf16 without AVX-512 BF16: the sparse kernel);
# 2 * PAIRS_MIN_BATCH + 5: the pair kernel (AVX-512 BF16, bf16) with a partial block of 64 rows
BATCHES = [1, 2, 3, 4, 5, 8, 9, SPARSE_MAX_BATCH, SPARSE_MAX_BATCH + 1, SPARSE_MAX_BATCH_FP32,
           SPARSE_MAX_BATCH_FP32 + 1, SPARSE_MAX_BATCH_BF16, SPARSE_MAX_BATCH_BF16 + 1, PAIRS_MIN_BATCH + 5,
           2 * PAIRS_MIN_BATCH + 5]


def sparse_weight(out_f: int, in_f: int, sparsity: float, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Random weight with ``sparsity`` zeros, plus one all-zero row and one fully dense row when there is room."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g) * (torch.rand(out_f, in_f, generator=g) >= sparsity)
    if out_f >= 3:
        w[1] = 0.0
        w[2] = torch.randn(in_f, generator=g)
    return w.to(dtype)


def isa_or_skip(isa: str) -> None:
    if isa == "torch":
        return
    if load_extension() is None:
        pytest.skip(f"the C++ extension could not be built here: {kernel_info()['extension_error']}")
    if isa not in cpu_supported_isas():
        pytest.skip(f"this CPU lacks the {isa} path (it supports {cpu_supported_isas()})")


def reference(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x.float(), w.float(), None if bias is None else bias.float())


def tolerance(dtype: torch.dtype, in_f: int) -> dict[str, float]:
    # fp32: accumulation order only; bf16: x and W are exact bf16, the sum is fp32, the output rounds once
    return {"atol": 1e-5 * in_f ** 0.5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 1e-2}


# --------------------------------------------------------------------------- layout


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_pack_dense_round_trips_exactly(shape: tuple[int, int], dtype: torch.dtype) -> None:
    w = sparse_weight(*shape, 0.7, dtype)
    packed = pack_dense(w)
    assert packed.nnz == int((w != 0).sum())
    assert torch.equal(decompress_rows(packed), w)
    if shape[0] > 2:
        assert torch.equal(decompress_rows(packed, 1, 3), w[1:3])


def test_negative_zero_is_a_zero() -> None:
    w = torch.tensor([[0.0, -0.0, 1.5], [-0.0, 2.0, 0.0]])
    packed = pack_dense(w)
    assert packed.nnz == 2
    assert torch.equal(decompress_rows(packed), torch.tensor([[0.0, 0.0, 1.5], [0.0, 2.0, 0.0]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(37, 70), (37, 64), (5, 96), (3, 32)])  # rows of whole 32-bit words: fast path
def test_pack_compact_reads_the_checkpoint_pieces(dtype: torch.dtype, shape: tuple[int, int]) -> None:
    w = sparse_weight(*shape, 0.6, dtype)
    w[0] = 0  # an all-zero row
    w[-1] = torch.arange(1, shape[1] + 1)  # a fully dense row
    parts = compress(w)
    shifted = torch.cat([torch.zeros(1, dtype=torch.uint8), parts["bitmask"]])[1:]  # storage offset 1 (unaligned)
    for bitmask in (parts["bitmask"], shifted):
        packed = pack_compact(parts["values"], bitmask, parts["shape"])
        assert torch.equal(decompress_rows(packed), w)
        for name, tensor in pack_dense(w).tensors.items():
            assert torch.equal(packed.tensors[name], tensor), name


@pytest.mark.parametrize("columns", [40, 64])
def test_pack_compact_names_the_disagreeing_piece(columns: int) -> None:
    parts = compress(sparse_weight(8, columns, 0.5, torch.float32))
    with pytest.raises(SparseFormatError, match="popcount"):
        pack_compact(parts["values"][:-1], parts["bitmask"], parts["shape"])
    with pytest.raises(SparseFormatError, match="bytes"):
        pack_compact(parts["values"], parts["bitmask"][:-1], parts["shape"])
    with pytest.raises(SparseFormatError, match=r"\[out, in\]"):
        pack_compact(parts["values"], parts["bitmask"], [8, 40, 1])
    with pytest.raises(SparseFormatError, match="dtype"):
        pack_compact(parts["values"].double(), parts["bitmask"], parts["shape"])
    with pytest.raises(SparseFormatError, match="2-D"):
        pack_dense(torch.zeros(3))


# --------------------------------------------------------------------------- every path computes x W^T


@pytest.mark.parametrize("isa", [*COMPILED, "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_every_path_matches_dense_linear(isa: str, dtype: torch.dtype, shape: tuple[int, int],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    isa_or_skip(isa)
    monkeypatch.setenv("OWL_SPARSE_ISA", isa)
    out_f, in_f = shape
    w = sparse_weight(out_f, in_f, 0.7, dtype, seed=out_f)
    bias = torch.randn(out_f).to(dtype)
    packed = pack_dense(w)
    for batch in BATCHES:
        x = torch.randn(batch, in_f).to(dtype)
        for b in (None, bias):
            y = sparse_linear(x, packed, b)
            assert y.dtype == dtype and y.shape == (batch, out_f)
            torch.testing.assert_close(y.float(), reference(x, w, b), **tolerance(dtype, in_f),
                                       msg=lambda m, n=batch: f"{isa} batch {n}: {m}")


@settings(max_examples=60, deadline=None)
@given(out_f=st.integers(1, 70), in_f=st.integers(1, 300), sparsity=st.sampled_from([0.0, 0.5, 0.7, 0.9, 1.0]),
       batch=st.one_of(st.integers(1, SPARSE_MAX_BATCH_BF16 + 1), st.integers(PAIRS_MIN_BATCH, PAIRS_MIN_BATCH + 70)),
       bf16=st.booleans(), isa_index=st.integers(0, len(COMPILED)), seed=st.integers(0, 2**16))
def test_random_shapes_batches_and_paths_match_dense(out_f: int, in_f: int, sparsity: float, batch: int, bf16: bool,
                                                     isa_index: int, seed: int) -> None:
    """Random shapes (widths not a multiple of 32 or 64, all-zero and fully dense rows), batch 1-16 (the sparse
    kernel) and prefill batches (the pair kernel on AVX-512 BF16), every path this CPU runs: x Wᵀ."""
    paths = [isa for isa in COMPILED if load_extension() is not None and isa in cpu_supported_isas()] + ["torch"]
    isa = paths[isa_index % len(paths)]
    dtype = torch.bfloat16 if bf16 else torch.float32
    w = sparse_weight(out_f, in_f, sparsity, dtype, seed=seed)
    x = torch.randn(batch, in_f, generator=torch.Generator().manual_seed(seed)).to(dtype)
    previous = os.environ.get("OWL_SPARSE_ISA")
    os.environ["OWL_SPARSE_ISA"] = isa  # (hypothesis runs many examples per test: no monkeypatch fixture)
    try:
        y = sparse_linear(x, pack_dense(w))
    finally:
        if previous is None:
            del os.environ["OWL_SPARSE_ISA"]
        else:
            os.environ["OWL_SPARSE_ISA"] = previous
    torch.testing.assert_close(y.float(), reference(x, w, None), **tolerance(dtype, in_f),
                               msg=lambda m: f"{isa} {dtype} {out_f}x{in_f} batch {batch}: {m}")


@pytest.mark.parametrize("isa", COMPILED)
def test_real_layer_shapes_and_sparsities(isa: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """SmolLM2-135M's MLP shapes at the sparsities the allocators hand out, fp32 and bf16."""
    isa_or_skip(isa)
    monkeypatch.setenv("OWL_SPARSE_ISA", isa)
    for (out_f, in_f), sparsity in [((1536, 576), 0.5), ((576, 1536), 0.7), ((1536, 576), 0.9), ((576, 576), 0.0)]:
        for dtype in (torch.float32, torch.bfloat16):
            w = sparse_weight(out_f, in_f, sparsity, dtype)
            x = torch.randn(3, 1, in_f).to(dtype)  # leading dims are kept
            y = sparse_linear(x, pack_dense(w))
            assert y.shape == (3, 1, out_f)
            torch.testing.assert_close(y.float(), reference(x, w, None), **tolerance(dtype, in_f))


# the pair kernel's two forms: bf16 pairs (AVX-512 BF16) and fp32 columns (any AVX-512 path)
PAIR_FORMS = [pytest.param(torch.bfloat16, "avx512_bf16", id="bf16"), pytest.param(torch.float32, "avx512", id="fp32")]


@pytest.mark.parametrize(("dtype", "needs"), PAIR_FORMS)
@pytest.mark.parametrize("in_f", [33, 71, 257, 2048])
def test_prefill_batches_run_the_pair_kernel_and_match_dense(in_f: int, dtype: torch.dtype, needs: str) -> None:
    """Where runs_pair_kernel (bf16 on AVX-512 BF16 from PAIRS_MIN_BATCH rows, fp32 on AVX-512 above
    SPARSE_MAX_BATCH_FP32): the op is the pair kernel (bit-equal to calling it), the numbers are x Wᵀ up to bf16
    rounding or 1e-5 (fp32), for odd widths, all-zero and fully dense rows, partial 64-row blocks, and any thread
    count (rows of W are split across threads, never a dot product)."""
    isa_or_skip(needs)
    w = sparse_weight(67, in_f, 0.7, dtype, seed=in_f)
    packed = pack_dense(w)
    first = PAIRS_MIN_BATCH if dtype == torch.bfloat16 else SPARSE_MAX_BATCH_FP32 + 1
    for batch in (first, 2 * PAIRS_MIN_BATCH + 5, 3 * 64 + 63):
        x = torch.randn(batch, in_f).to(dtype)
        assert runs_pair_kernel(batch, selected_isa(), dtype)
        y = sparse_linear(x, packed)
        direct = torch.ops.owl_ext.sparse_gemm_pairs(x, *packed.ordered(), packed.out_features, in_f)
        assert torch.equal(y, direct), f"batch {batch}: the op did not run the pair kernel"
        torch.testing.assert_close(y.float(), reference(x, w, None), **tolerance(dtype, in_f))
        threads = torch.get_num_threads()  # (the suite runs one thread: tests/conftest.py)
        try:
            torch.set_num_threads(max(2, threads))
            many = sparse_linear(x, packed)
            torch.set_num_threads(1)
            assert torch.equal(sparse_linear(x, packed), many) and torch.equal(many, y)
        finally:
            torch.set_num_threads(threads)


def dense_gemms_in(fn) -> int:
    """How many dense GEMMs (aten::linear / mm) ``fn`` ran: the tiled path runs one per tile, the kernels none."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key in ("aten::linear", "aten::mm", "aten::addmm"))


def test_the_pair_kernel_runs_where_it_was_measured_faster() -> None:
    """runs_pair_kernel: from PAIRS_MIN_BATCH rows at whole groups of 16, from twice that at any count; the C++ op
    follows the same rule: no dense GEMM exactly there, the tiled path's GEMMs elsewhere (bf16 results of the two
    paths are usually bit-equal, so the profiler, not the numbers, tells them apart)."""
    rows = [PAIRS_MIN_BATCH - 1, PAIRS_MIN_BATCH, PAIRS_MIN_BATCH + 1, PAIRS_MIN_BATCH + 16, PAIRS_MIN_BATCH + 17,
            2 * PAIRS_MIN_BATCH, 2 * PAIRS_MIN_BATCH + 1, 5 * PAIRS_MIN_BATCH + 3]
    assert [runs_pair_kernel(r) for r in rows] == [False, True, False, True, False, True, True, True]
    # fp32: every count above the sparse kernel's, on any AVX-512 path; never on AVX2 / portable; no other dtype
    for isa in ("avx512_bf16", "avx512_vbmi2", "avx512"):
        assert not runs_pair_kernel(SPARSE_MAX_BATCH_FP32, isa, torch.float32)
        assert all(runs_pair_kernel(r, isa, torch.float32) for r in (SPARSE_MAX_BATCH_FP32 + 1, 33, 49, 512))
    assert not any(runs_pair_kernel(512, isa, torch.float32) for isa in ("avx2", "portable", "torch-fallback"))
    assert not runs_pair_kernel(512, "avx512_bf16", torch.float16)
    assert not any(runs_pair_kernel(512, isa) or runs_pair_kernel(512, isa, torch.bfloat16)
                   for isa in ("avx512_vbmi2", "avx512", "avx2"))
    isa_or_skip("avx512_bf16")
    w = sparse_weight(64, 2048, 0.7, torch.bfloat16, seed=3)
    packed = pack_dense(w)
    for batch in rows:
        x = torch.randn(batch, 2048).bfloat16()
        y = sparse_linear(x, packed)
        assert (dense_gemms_in(lambda x=x: sparse_linear(x, packed)) == 0) == runs_pair_kernel(batch), f"batch {batch}"
        torch.testing.assert_close(y.float(), reference(x, w, None), **tolerance(torch.bfloat16, 2048))


@pytest.mark.parametrize("isa", COMPILED)
def test_the_sparse_kernel_runs_where_it_was_measured_faster(isa: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """runs_sparse_kernel, in Python and in the C++ op alike: fp32 up to SPARSE_MAX_BATCH_FP32 rows on the AVX-512
    paths (SPARSE_MAX_BATCH on AVX2 and portable), bf16 up to SPARSE_MAX_BATCH_BF16 with AVX-512 BF16 (SPARSE_MAX_BATCH
    on portable) and at every count on the SIMD paths without it: no dense GEMM exactly there (nor where the pair
    kernel runs: 200 rows)."""
    isa_or_skip(isa)
    monkeypatch.setenv("OWL_SPARSE_ISA", isa)
    assert not runs_sparse_kernel(0, isa, torch.float32) and not runs_sparse_kernel(1, isa, torch.float16)
    avx512 = isa.startswith("avx512")
    fp32_max = SPARSE_MAX_BATCH_FP32
    expected = {torch.float32: {1: True, 16: True, 17: avx512, fp32_max: avx512, fp32_max + 1: False, 33: False},
                torch.bfloat16: {1: True, 16: True, 17: isa != "portable", SPARSE_MAX_BATCH_BF16: isa != "portable",
                                 SPARSE_MAX_BATCH_BF16 + 1: isa not in ("avx512_bf16", "portable"),
                                 33: isa not in ("avx512_bf16", "portable"),
                                 200: isa not in ("avx512_bf16", "portable")}}
    for dtype, by_rows in expected.items():
        w = sparse_weight(40, 96, 0.7, dtype, seed=5)
        packed = pack_dense(w)
        for rows, sparse in by_rows.items():
            assert runs_sparse_kernel(rows, isa, dtype) == sparse, f"{isa} {dtype} {rows} rows"
            x = torch.randn(rows, 96).to(dtype)
            gemms = dense_gemms_in(lambda x=x, packed=packed: sparse_linear(x, packed))
            assert (gemms == 0) == (sparse or runs_pair_kernel(rows, isa, dtype)), \
                f"{isa} {dtype} {rows} rows: {gemms} GEMMs"
            torch.testing.assert_close(sparse_linear(x, packed).float(), reference(x, w, None), **tolerance(dtype, 96))


@pytest.mark.parametrize(("dtype", "needs"), PAIR_FORMS)
@pytest.mark.parametrize("in_f", [33, 257])
def test_pair_kernel_last_block_of_every_width_matches_dense(in_f: int, dtype: torch.dtype, needs: str) -> None:
    """The last block of x runs 1-4 vectors of 16 rows (only its live rows): every tail width, alone and after
    full blocks, gives x Wᵀ up to bf16 rounding (fp32: 1e-5), and a row's result never depends on the rows beside
    it."""
    isa_or_skip(needs)
    w = sparse_weight(67, in_f, 0.7, dtype, seed=7 * in_f)
    packed = pack_dense(w)
    x_all = torch.randn(64 + 64, in_f).to(dtype)
    full = torch.ops.owl_ext.sparse_gemm_pairs(x_all, *packed.ordered(), packed.out_features, in_f)
    for batch in (1, 15, 16, 17, 32, 33, 48, 49, 63, 64, 65, 81, 97, 113, 127):
        x = x_all[:batch].contiguous()
        y = torch.ops.owl_ext.sparse_gemm_pairs(x, *packed.ordered(), packed.out_features, in_f)
        torch.testing.assert_close(y.float(), reference(x, w, None), **tolerance(torch.bfloat16, in_f))
        assert torch.equal(y, full[:batch]), f"batch {batch}: rows changed with the block's width"


def test_float16_weights_run_the_tiled_path() -> None:
    w = sparse_weight(50, 70, 0.7, torch.float16)
    x = torch.randn(2, 70).half()
    torch.testing.assert_close(sparse_linear(x, pack_dense(w)).float(), reference(x, w, None), atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize("isa", COMPILED)  # (the torch twin's dense GEMM may split a dot product)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_results_do_not_depend_on_the_thread_count(isa: str, dtype: torch.dtype,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """1 and 2+ threads give bit-equal results on every path a batch reaches (sparse kernel, pair kernel, tiled):
    threads split the rows of W, never a row's sum."""
    isa_or_skip(isa)
    monkeypatch.setenv("OWL_SPARSE_ISA", isa)
    packed = pack_dense(sparse_weight(257, 300, 0.7, dtype))
    threads = torch.get_num_threads()
    try:
        for batch in (5, SPARSE_MAX_BATCH_FP32 + 2, PAIRS_MIN_BATCH + 16, 3 * 64 + 5):
            x = torch.randn(batch, 300).to(dtype)
            torch.set_num_threads(1)
            single = sparse_linear(x, packed)
            torch.set_num_threads(max(2, threads))
            assert torch.equal(sparse_linear(x, packed), single), f"{batch} rows"
    finally:
        torch.set_num_threads(threads)


def test_empty_batch() -> None:
    packed = pack_dense(sparse_weight(9, 40, 0.5, torch.float32))
    assert sparse_linear(torch.zeros(0, 40), packed).shape == (0, 9)


# --------------------------------------------------------------------------- bad input names the bad value


def test_bad_activations_are_refused_by_name() -> None:
    packed = pack_dense(sparse_weight(9, 40, 0.5, torch.float32))
    with pytest.raises(SparseInputError, match=r"\[\.\.\., 40\], got \(2, 41\)"):
        sparse_linear(torch.zeros(2, 41), packed)
    with pytest.raises(SparseInputError, match="torch.bfloat16 differs from the weight dtype torch.float32"):
        sparse_linear(torch.zeros(2, 40, dtype=torch.bfloat16), packed)
    with pytest.raises(SparseInputError, match="contiguous"):
        sparse_linear(torch.zeros(40, 2).T, packed)
    with pytest.raises(SparseInputError, match=r"bias must be \[9\]"):
        sparse_linear(torch.zeros(2, 40), packed, torch.zeros(8))
    with pytest.raises(SparseInputError, match="PackedLinear"):
        sparse_linear(torch.zeros(2, 40), torch.zeros(9, 40))  # type: ignore[arg-type]


def test_raw_ops_refuse_a_path_the_cpu_lacks_and_strided_pieces() -> None:
    """The raw ops take their path from the caller: one this CPU cannot execute raises (instead of SIGILL), as do
    strided packed pieces, which the kernels would index as contiguous (an out-of-bounds read)."""
    isa_or_skip("portable")
    packed = pack_dense(sparse_weight(9, 40, 0.5, torch.float32))
    masks, values, offsets = packed.ordered()
    x = torch.zeros(2, 40)
    tile = torch.empty(9, 40)
    for bad in (-1, 5):
        with pytest.raises(RuntimeError, match=f"isa={bad} is not a compiled path"):
            torch.ops.owl_ext.sparse_gemm(x, masks, values, offsets, 9, 40, bad)
    supported = cpu_supported_isas()
    for isa in (name for name in COMPILED if name not in supported):  # on CPUs without AVX-512 (make test: qemu)
        with pytest.raises(RuntimeError, match=f"isa={ISAS[isa]} needs CPU features this CPU lacks"):
            torch.ops.owl_ext.sparse_gemm(x, masks, values, offsets, 9, 40, ISAS[isa])
        with pytest.raises(RuntimeError, match="needs CPU features this CPU lacks"):
            torch.ops.owl_ext.decompress_rows_into(masks, values, offsets, 0, 9, tile, ISAS[isa])
    if "avx512" not in supported:
        with pytest.raises(RuntimeError, match="isa=2 needs CPU features this CPU lacks"):
            torch.ops.owl_ext.sparse_gemm_pairs(torch.zeros(40, 40), masks, values, offsets, 9, 40)
    strided = torch.stack([offsets, torch.full_like(offsets, 10**12)], 1)[:, 0]
    with pytest.raises(RuntimeError, match="row_offsets must be contiguous int64"):
        torch.ops.owl_ext.decompress_rows_into(masks, values, strided, 0, 9, tile, ISAS["portable"])
    with pytest.raises(RuntimeError, match="masks must be contiguous int32"):
        torch.ops.owl_ext.decompress_rows_into(masks.T.contiguous().T, values, offsets, 0, 9, tile, 0)
    with pytest.raises(RuntimeError, match="bad range, scratch tile or dtype"):
        torch.ops.owl_ext.decompress_rows_into(masks, values, offsets, 0, 9, tile.view(torch.int32), 0)
    torch.ops.owl_ext.decompress_rows_into(masks, values, offsets, 0, 9, tile, ISAS["portable"])
    assert torch.equal(tile, decompress_rows(packed))


def test_forcing_a_path_the_cpu_lacks_or_a_wrong_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    packed = pack_dense(sparse_weight(9, 40, 0.5, torch.float32))
    monkeypatch.setenv("OWL_SPARSE_ISA", "avx1024")
    with pytest.raises(SparseKernelUnavailable, match="'avx1024' is not a path"):
        sparse_linear(torch.zeros(1, 40), packed)
    missing = [isa for isa in COMPILED if isa not in cpu_supported_isas()]
    if load_extension() is not None and missing:
        monkeypatch.setenv("OWL_SPARSE_ISA", missing[0])
        with pytest.raises(SparseKernelUnavailable, match=f"'{missing[0]}' but this CPU supports only"):
            sparse_linear(torch.zeros(1, 40), packed)


# --------------------------------------------------------------------------- torch.compile traces through the op


def test_custom_ops_pass_torch_opcheck() -> None:
    """The Python op (pure-torch twin) and the C++ op the compiled path calls: schema, fake impl, dispatch."""
    packed = pack_dense(sparse_weight(33, 70, 0.6, torch.float32))
    for x, bias in [(torch.randn(3, 70), torch.randn(33)), (torch.randn(2, 4, 70), None), (torch.randn(40, 70), None)]:
        torch.library.opcheck(torch.ops.owl.sparse_linear.default,
                              (x, bias, *packed.ordered(), packed.out_features, packed.in_features))
        if load_extension() is not None:
            torch.library.opcheck(torch.ops.owl_ext.sparse_linear.default,
                                  (x, bias, *packed.ordered(), packed.out_features, packed.in_features,
                                   SPARSE_MAX_BATCH, SPARSE_MAX_BATCH_BF16, SPARSE_MAX_BATCH_FP32, PAIRS_MIN_BATCH,
                                   1 << 20))
    if load_extension() is not None:  # bf16 prefill: the pair kernel (AVX-512 BF16) or the sparse kernel
        packed = pack_dense(sparse_weight(33, 70, 0.6, torch.bfloat16))
        x = torch.randn(2 * PAIRS_MIN_BATCH + 3, 70).bfloat16()
        torch.library.opcheck(torch.ops.owl_ext.sparse_linear.default,
                              (x, None, *packed.ordered(), packed.out_features, packed.in_features,
                               SPARSE_MAX_BATCH, SPARSE_MAX_BATCH_BF16, SPARSE_MAX_BATCH_FP32, PAIRS_MIN_BATCH,
                               1 << 20))


def test_torch_compile_traces_through_the_op() -> None:
    """Inductor (what vLLM compiles with), dynamic batch: one graph, no break, the same numbers (~15 s)."""
    w = sparse_weight(48, 64, 0.7, torch.float32)
    packed = pack_dense(w)

    def mlp(x: torch.Tensor) -> torch.Tensor:
        return torch.relu(sparse_linear(x, packed)) * 2.0

    compiled = torch.compile(mlp, fullgraph=True, dynamic=True)  # fullgraph: a graph break fails the test
    for batch in (1, 3, SPARSE_MAX_BATCH + 4):
        x = torch.randn(batch, 64)
        torch.testing.assert_close(compiled(x), torch.relu(x @ w.T) * 2.0, atol=1e-5, rtol=1e-5)


def test_forced_path_ignores_case_and_spaces_in_python_and_cpp_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    isa_or_skip("avx2")
    w = sparse_weight(9, 40, 0.5, torch.float32)
    monkeypatch.setenv("OWL_SPARSE_ISA", " AVX2 ")
    x = torch.randn(2, 40)
    torch.testing.assert_close(sparse_linear(x, pack_dense(w)), x @ w.T, atol=1e-5, rtol=1e-5)
    monkeypatch.setenv("OWL_SPARSE_ISA", " ")  # blank: the best path, as if unset
    torch.testing.assert_close(sparse_linear(x, pack_dense(w)), x @ w.T, atol=1e-5, rtol=1e-5)
