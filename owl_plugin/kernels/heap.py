"""Give the heap that packing freed back to the system.

Packing a layer (or loading a dense one and dropping it) frees buffers below glibc's mmap threshold; glibc keeps
them in the process's heap, so the resident set stays near dense size although no dense weight is held.
``malloc_trim(0)`` returns free heap pages to the system (glibc only; elsewhere a no-op). Measured on
TinyLlama-1.1B's shape at 70% in transformers: RSS after loading 2.15 → 1.66 GiB (``examples/results/NOTES.md``).
"""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def return_freed_heap() -> bool:
    """``malloc_trim(0)``; True when glibc returned memory to the system."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
