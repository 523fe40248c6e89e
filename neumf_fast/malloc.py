"""Process-wide memory settings for training processes (``configure_malloc``)."""

from __future__ import annotations

import ctypes
import platform

# glibc malloc's settings for a training process (configure_malloc): blocks below 32 MiB (glibc's
# largest mmap threshold) come from the heap, and up to 256 MiB of freed heap is kept.
MALLOC_MMAP_THRESHOLD = 32 << 20
MALLOC_TRIM_THRESHOLD = 256 << 20


def configure_malloc() -> bool:
    """Makes this process keep the memory it frees (glibc malloc only); returns whether it did.

    A training step allocates and frees the same megabyte-sized tensors every step: table
    gradients, the tower's activations.  glibc adapts its mmap and trim thresholds as a process
    frees memory, and a process can settle, by the order of its earlier allocations, where each
    of those tensors is a fresh mmap whose pages fault on first touch.  On the 2-core dev VM the
    backward of a batch-256 NeuMF step then took 381 page faults and about 1 ms, against 0.07-0.15
    ms in a process that reuses its heap, and which of the two a process got changed from run to
    run.  Fixing both thresholds (``mallopt``) keeps blocks under 32 MiB in the heap and the
    freed heap in the process: at most 256 MiB more resident memory than it needs.

    ``neumf-fast train`` calls it at start-up, and the benchmarks for every provider alike.  A
    process-wide setting, so the library never calls it on import.  This module imports nothing
    but the standard library: the GPU benchmarks' image may lack the pipeline's numpy."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return mallopt(m_mmap_threshold, MALLOC_MMAP_THRESHOLD) == 1 and mallopt(m_trim_threshold, MALLOC_TRIM_THRESHOLD) == 1
