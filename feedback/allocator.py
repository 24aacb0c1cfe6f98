"""glibc's allocator, tuned for processes that allocate and free multi-megabyte buffers all the time.

The ingestor's consumer (kafka-python's fetch buffers, ~1 MB each) and its flush workers (Arrow and Parquet
buffers of a 15 MB batch) allocate and free big blocks at every poll and every flush. glibc serves a block
above its mmap threshold (128 KiB at start, raised only when such a block is freed) with a fresh ``mmap``,
whose pages the kernel faults in one by one, and gives it back with ``munmap`` when freed. With the threshold
at 64 MiB and the heap trimmed only above 128 MiB free, those blocks are reused from the heap instead.
Measured with ``python -m bench.bench_ingest`` (2026-12-06, 2 cores): the raw kafka-python peer ~100k ->
~114k events/s, the ingestor ~63k -> ~69k events/s. Memory: freed blocks stay in the process (up to the trim
threshold) rather than going back to the kernel at once.

A process started with ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` in its environment keeps
what its operator chose. Elsewhere than glibc (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 128 << 20


def keep_big_buffers() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (see the module doc); True if it did."""
    if not sys.platform.startswith("linux") or {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"} & set(os.environ):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
