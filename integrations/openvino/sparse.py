"""The OpenVINO CPU plugin's sparse-weight decompression: its switch and the proof that it ran.

The CPU plugin can multiply an int8 activation by an int8 weight stored sparsely (only the
non-zeros, AMX tiles): a weight whose fraction of zeros is at least
``CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE`` (a compile-time property, default 1 = off) is packed
at compile time, and its MatMul runs a ``*_sparse_*`` brgemm kernel. It needs int8 weights *and*
int8 activations (a FakeQuantize in front of the MatMul) and a CPU with AMX; elsewhere the
property is accepted and ignored. Whether it ran is visible only in the performance counters:
the ``exec_type`` of each executed node (e.g. ``brgemm_avx512_amx_sparse_I8`` vs
``brgemm_avx512_amx_I8``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

RATE_KEY = "CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE"
#: sparse packing for every weight with at least this fraction of zeros. OWL at 70 % gives its
#: linears 0.6-0.8; the kernels pay off from ~0.5 on large weights (measured in examples/benchmark_openvino.py)
DEFAULT_RATE = 0.5
OFF_RATE = 1.0  # the plugin's default: no sparse packing
PERF_KEY = "PERF_COUNT"


def check_rate(rate: float) -> float:
    """``rate`` if it is a fraction in (0, 1]; else a ValueError naming it."""
    if not 0.0 < float(rate) <= 1.0:
        raise ValueError(f"sparse decompression rate {rate!r} must be in (0, 1]: weights with at least this fraction "
                         "of zeros are packed sparsely (1.0 turns the sparse kernels off)")
    return float(rate)


def ov_config(rate: float = DEFAULT_RATE, *, perf_count: bool = False) -> dict[str, str]:
    """Compile properties for the CPU plugin: sparse packing from ``rate`` on, optional counters."""
    config = {RATE_KEY: f"{check_rate(rate):g}"}
    if perf_count:
        config[PERF_KEY] = "YES"
    return config


def is_sparse_exec_type(exec_type: str) -> bool:
    """True for the CPU plugin's sparse-weight kernels (``brgemm_avx512_amx_sparse_I8``, ...)."""
    return "sparse" in exec_type.lower()


def exec_type_counts(requests: Iterable[Any]) -> dict[str, int]:
    """Executed MatMul / FullyConnected* nodes per ``exec_type`` over infer requests (counters on).

    Counts each node once (by name) over all given requests.
    """
    seen: dict[str, str] = {}
    for request in requests:
        for info in request.profiling_info:
            linear = info.node_type == "MatMul" or info.node_type.startswith("FullyConnected")  # ...QuantizedLegacy
            if linear and info.status.name == "EXECUTED":
                seen.setdefault(info.node_name, info.exec_type)
    return dict(sorted(Counter(seen.values()).items()))


def sparse_summary(counts: Mapping[str, int]) -> dict[str, Any]:
    """``{"execTypes": counts, "sparse_nodes": n, "used": n > 0}`` (the runner's notes.sparse_kernels)."""
    sparse = sum(n for kind, n in counts.items() if is_sparse_exec_type(kind))
    return {"execTypes": dict(counts), "sparse_nodes": sparse, "used": sparse > 0}
