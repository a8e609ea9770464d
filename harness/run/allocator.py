"""Keep freed memory in the process for reuse (glibc ``mallopt``), for batched CPU tensor work.

glibc serves every allocation above its mmap threshold (128 KiB at start, adjusted upwards as
such blocks are freed) with a fresh ``mmap`` and gives it back on ``free``, and trims the heap
top back to the OS beyond 128 KiB. A batched world-model call makes thousands of short-lived
tensors of 0.3-5 MB (300 CEM candidates x 16 tokens x 64 channels is 1.2 MB in float32): each
one is then paid for with page faults and zeroing, and elementwise kernels ran 2-3x slower
than on reused memory (frame attention over 300 candidates 2.2 vs 0.9 ms). Raising both
thresholds keeps those blocks on the heap: a 300-candidate CEM call ran 12-14% faster in float32
and 1-10% in bfloat16 (`benchmarks/run_all.py --only cem`, docs/benchmarks.md). Small tensors (batch-1 calls) never reach the thresholds and are
unaffected. The price: memory freed after a peak stays with the process (up to the trim
threshold) instead of going back to the OS.

The same effect is what PyTorch's CPU performance guides get by preloading jemalloc or tcmalloc;
this needs no extra library. It does nothing on other C libraries (macOS, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest allowed value on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 256 * 1024 * 1024

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once). True where applied."""
    global _applied
    if _applied is None:
        _applied = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                mallopt = libc.mallopt
            except (OSError, AttributeError):  # not glibc
                return False
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
