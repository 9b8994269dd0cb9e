"""Process-wide allocator setting for steady timings (see :func:`steady_allocator`)."""

from __future__ import annotations

import platform

#: Whether the thresholds are raised in this process (set by :func:`steady_allocator`; a
#: benchmark sets it beforehand to measure with glibc's defaults).
ALLOCATOR_STEADY = False


def steady_allocator() -> bool:
    """Keep freed memory in the process (glibc ``mallopt``: mmap and trim thresholds at 1 GiB).

    glibc serves a large allocation with a fresh ``mmap`` until its adaptive threshold has
    grown past that size, so activation buffers can be mapped and page-faulted on every
    forward or training step, depending on what the process allocated before, which makes
    timings of the same network differ from one process to the next
    (benchmarks/bench_allocator.py measures it).
    Called by every latency measurement and by the proxy trainer; a no-op (returning False)
    where glibc is not the allocator. The setting is process-wide and lasts for the process.
    """
    global ALLOCATOR_STEADY
    if ALLOCATOR_STEADY:
        return True
    if platform.system() != "Linux":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1 and libc.mallopt(m_trim_threshold, 1 << 30) == 1
    except (OSError, AttributeError):
        return False
    ALLOCATOR_STEADY = ok
    return ok
