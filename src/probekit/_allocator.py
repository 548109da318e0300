"""CPU memory-allocator tuning for inference-heavy loops.

With glibc's default settings, every forward pass that keeps many large activations alive at once
(as capturing every layer does) returns the freed heap top to the OS afterwards and page-faults it
back in on the next pass. Raising the trim threshold and the mmap threshold keeps that memory in
the process: on a small CNN this halves the plain forward time on CPU and removes the extra cost of
capturing every layer (see benchmarks/capture_overhead.py). `probekit run` applies it; library
users can call `tune_allocator` themselves. It does nothing where glibc is not the allocator.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done = False


def tune_allocator(trim_threshold: int = 1 << 30, mmap_threshold: int = 32 << 20) -> bool:
    """Keep freed heap memory for reuse instead of returning it to the OS (glibc only).

    Returns whether the settings were applied. Memory the process has freed stays reserved up to
    `trim_threshold` bytes, which is what a loop of large forward passes reuses anyway.
    """
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc
        return False
    ok = mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1 and mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
    _done = ok
    return ok
