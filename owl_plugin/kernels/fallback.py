"""Keep a layer dense where the sparse kernel loses to dense at batch 1: a load-time measurement per shape.

The issue's rule for CPUs without AVX-512: never slower than dense (≥ 0.95× on every row), falling back
where the sparse path loses. Measured on this project's machines (batch 1, 70%, weights streamed):

- AVX-512 paths beat the best dense op in every row (AMD EPYC, AVX-512 BF16: 1.77-2.74× at batch 1,
  ``examples/results/kernels_vs_vllm.md``; Intel Xeon, AVX-512 VBMI2 without BF16: 1.49-2.18× for bf16 and
  1.76-2.44× for fp32, ``kernels_avx512_vbmi2.md``), so nothing is measured there and every layer is packed;
- the AVX2 path once lost on small bf16 layers (576×1536 batch 1: 0.64× of torch) and now reaches ≥ 1.06×
  in every row of ``kernels_avx2_on_avx512.md`` (a proxy: AVX2 forced on an AVX-512 CPU). Other AVX2 CPUs
  (older cores, other caches) may differ, so there the measurement stays, as a safety net.

So on the AVX2 and portable paths, :func:`keep_dense` times ``F.linear`` on the dense weight against the
sparse kernel on its packed form, batch 1, with the caches flushed before every call (decode streams the
weights from memory), median of ``ROUNDS`` interleaved pairs, once per (path, shape, dtype, density to
0.05). If ``dense / sparse < 0.95`` the loader keeps that layer dense (more memory, never slower).

``OWL_SPARSE_FALLBACK`` overrides: ``measure`` (default; measures only on non-AVX-512 paths), ``never``
(always pack), ``always`` (measure on every path, AVX-512 included). ``OWL_SPARSE_MIN_SPEEDUP`` moves the
0.95 floor (e.g. 1.2: pack only where the kernel is at least 1.2× faster).
"""

from __future__ import annotations

import os
import statistics
import time

import torch
import torch.nn.functional as F

from owl_plugin.kernels.pack import PackedLinear

FALLBACK_ENV = "OWL_SPARSE_FALLBACK"
MIN_SPEEDUP_ENV = "OWL_SPARSE_MIN_SPEEDUP"
MODES = ("measure", "never", "always")
MIN_SPEEDUP = 0.95  # default floor: sparse must run at ≥ 0.95× of dense, else the layer stays dense
ROUNDS = 7
FLUSH_BYTES = 64 << 20  # written before each timed call: more than the last-level cache of these CPUs
_DECISIONS: dict[tuple, dict] = {}


def fallback_mode() -> str:
    """``OWL_SPARSE_FALLBACK`` (default ``measure``).

    Raises:
        ValueError: a value other than measure/never/always, naming it.
    """
    value = os.environ.get(FALLBACK_ENV, "measure").strip().lower() or "measure"
    if value not in MODES:
        raise ValueError(f"{FALLBACK_ENV}={value!r}: use one of {', '.join(MODES)}")
    return value


def min_speedup() -> float:
    """``OWL_SPARSE_MIN_SPEEDUP`` (default ``MIN_SPEEDUP``): the dense/sparse ratio below which a layer stays dense.

    Raises:
        ValueError: not a number ≥ 0, naming the value.
    """
    value = os.environ.get(MIN_SPEEDUP_ENV, "").strip()
    if not value:
        return MIN_SPEEDUP
    try:
        floor = float(value)
    except ValueError:
        floor = -1.0
    if not floor >= 0:
        raise ValueError(f"{MIN_SPEEDUP_ENV}={value!r}: use a number >= 0 (default {MIN_SPEEDUP})")
    return floor


def _timed(fn, flush: torch.Tensor, fill: int) -> float:
    flush.fill_(fill)  # evict the weight from the caches, as a decode step over many layers does
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def measure(weight: torch.Tensor, packed: PackedLinear) -> dict:
    """Batch-1 time of dense ``F.linear`` and of the sparse kernel on this weight: ``{"dense_s", "sparse_s",
    "speedup"}`` (speedup = dense / sparse, medians of ``ROUNDS`` interleaved pairs, caches flushed)."""
    from owl_plugin.kernels.dispatch import sparse_linear

    x = torch.randn(1, weight.shape[1]).to(weight.dtype)
    flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8)
    with torch.inference_mode():
        F.linear(x, weight)  # warm-up: first-call costs of both
        sparse_linear(x, packed)
        dense, sparse = [], []
        for i in range(ROUNDS):
            dense.append(_timed(lambda: F.linear(x, weight), flush, i))
            sparse.append(_timed(lambda: sparse_linear(x, packed), flush, i + 1))
    dense_s, sparse_s = statistics.median(dense), statistics.median(sparse)
    return {"dense_s": dense_s, "sparse_s": sparse_s, "speedup": dense_s / max(sparse_s, 1e-12)}


def keep_dense(weight: torch.Tensor | None, packed: PackedLinear) -> dict | None:
    """The measurement that says this layer should stay dense, or None to use the sparse kernel.

    Measures (once per path, shape, dtype and density to 0.05) only where the sparse path can lose: on the
    AVX2, portable and pure-torch paths, for float16 weights on every path (no kernel takes them: they run
    decompress-then-dense), or everywhere with ``OWL_SPARSE_FALLBACK=always``. ``weight`` is the
    dense weight, or None to rebuild it from ``packed`` if a measurement needs it.
    """
    from owl_plugin.kernels.dispatch import runs_sparse_kernel, selected_isa

    mode = fallback_mode()
    isa = selected_isa()
    has_kernel = runs_sparse_kernel(1, isa, packed.dtype)  # float16: no kernel, only the tiled path (can lose anywhere)
    if mode == "never" or (mode == "measure" and isa.startswith("avx512") and has_kernel):
        return None
    density = packed.nnz / max(1, packed.out_features * packed.in_features)
    key = (isa, packed.out_features, packed.in_features, packed.dtype, round(density * 20) / 20)
    if key not in _DECISIONS:
        if weight is None:
            from owl_plugin.kernels.pack import decompress_rows

            weight = decompress_rows(packed)
        _DECISIONS[key] = {"isa": isa, "shape": [packed.out_features, packed.in_features],
                           "dtype": str(packed.dtype).removeprefix("torch."), **measure(weight, packed)}
    decision = _DECISIONS[key]
    return decision if decision["speedup"] < min_speedup() else None


def fallback_decisions() -> list[dict]:
    """Every measurement made in this process, in the order they were made."""
    return list(_DECISIONS.values())


def kept_dense() -> list[dict]:
    """The measurements of this process that kept layers dense (speedup below :func:`min_speedup`)."""
    floor = min_speedup()
    return [d for d in _DECISIONS.values() if d["speedup"] < floor]
