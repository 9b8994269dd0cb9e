"""Process-wide allocator setting for steady timings (see :func:`steady_allocator`)."""

from __future__ import annotations

import platform

_ALLOCATOR_STEADY = False


def steady_allocator() -> bool:
    """Keep freed memory in the process (glibc ``mallopt``: mmap and trim thresholds at 1 GiB).

    glibc serves a large allocation with a fresh ``mmap`` until its adaptive threshold has
    grown past that size, so activation buffers can be mapped and page-faulted on every
    forward or training step, depending on what the process allocated before. On this
    project's VM (benchmarks/bench_allocator.py) rexnet-1.0 measured 16.7-24.9 ms in three fresh
    processes with glibc's defaults and 17.0-18.5 ms with the thresholds raised, and a
    proxy epoch took 3.2 s instead of 3.5-4.3 s.
    Called by every latency measurement and by the proxy trainer; a no-op (returning False)
    where glibc is not the allocator. The setting is process-wide and lasts for the process.
    """
    global _ALLOCATOR_STEADY
    if _ALLOCATOR_STEADY:
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
    _ALLOCATOR_STEADY = ok
    return ok
