"""Process-wide CPU settings that eager PyTorch needs to run BiXT near the machine's speed.

Activations of a vision model at batch 32 are 1-20 MB each. glibc hands allocations of that size
out as fresh ``mmap`` regions and unmaps them on free, so every activation's pages are faulted in
(and zeroed by the kernel) again on each forward pass: ~110k page faults per forward of
``bixt_ti_l64_p16`` at batch 32, a quarter of its run time on a 2-core Xeon. Keeping those blocks
in the heap makes the second pass fault-free.

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
_M_MMAP_THRESHOLD = -3
# glibc rejects larger mmap thresholds on 64-bit (HEAP_MAX_SIZE / 2); bigger blocks keep mmap.
_MAX_MMAP_THRESHOLD = 32 * 1024 * 1024
_ENV_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

_applied: bool | None = None


def tune_cpu_allocator(trim_threshold: int = 1 << 30) -> bool:
    """Serve blocks up to 32 MiB from the heap and keep up to ``trim_threshold`` bytes of freed heap.

    Idempotent; returns whether the settings are in effect. Does nothing (returns False) off glibc
    Linux, or when the user already chose malloc settings through ``MALLOC_*_`` / ``GLIBC_TUNABLES``
    environment variables.
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
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, _MAX_MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    return _applied
