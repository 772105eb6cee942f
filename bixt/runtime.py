"""Process-wide CPU settings that eager PyTorch needs to run BiXT near the machine's speed.

Activations of a vision model are 1-40 MB each. glibc hands allocations of that size out as fresh
``mmap`` regions and unmaps them on free, so every activation's pages are faulted in (and zeroed
by the kernel) again on each forward pass, on the order of 100k page faults per forward of
``bixt_ti_l64_p16`` at batch 32 or of one 448 px image at stride 4 (12544 tokens), a large share of
its run time. Serving every block from the heap and keeping freed heap memory makes the second pass
fault-free.

The cost is that freed activation memory stays with the process (resident set size stays near its
peak) instead of going back to the OS, the trade every caching allocator makes (PyTorch's CUDA
allocator included). Task entry points and the benchmarks call :func:`tune_cpu_allocator`; a library
user opts in by calling it once at start-up.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["tune_cpu_allocator"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_ENV_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

_applied: bool | None = None


def tune_cpu_allocator(trim_threshold: int = 1 << 30) -> bool:
    """Serve all allocations from the heap (no per-buffer ``mmap``) and keep up to
    ``trim_threshold`` bytes of freed memory at the top of the heap.

    Idempotent; returns whether the settings are in effect. Does nothing (returns False) off glibc
    Linux, or when the user already chose malloc settings through ``MALLOC_*_`` / ``GLIBC_TUNABLES``
    environment variables. glibc still falls back on ``mmap`` when the heap cannot grow.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux") or any(v in os.environ for v in _ENV_VARS):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt  # glibc only (musl has none)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    return _applied
