"""Whether the process's C allocator keeps freed host memory for reuse: the ``keep_host_memory`` speed switch.

PyTorch takes CPU tensors from ``malloc``. glibc's malloc serves a large block with a memory mapping of its own and
unmaps it when the block is freed: at first every block of 128 KiB or more, after warm-up every block of 32 MiB or
more (the threshold rises to the size of each mapped block freed, up to 32 MiB on 64-bit systems). The next tensor
of that size then starts as fresh pages, which the kernel zero-fills one 4 KiB page at a time at the first touch. A
model at full resolution allocates many such blocks in every forward pass: a 512-channel 120×160 float32 map is
39 MiB. On the project's 2-core AMD machine, creating and filling one took 19 ms against 2 ms for the same write
into memory already owned, and bilinear upsampling of a 512×60×80 map to 120×160 took 34 against 14 ms.

:func:`set_keep_host_memory` (True) tells glibc to serve every block from its heap (``M_MMAP_MAX = 0``) and to give
no freed memory back to the kernel (``M_TRIM_THRESHOLD = -1``), so after the first step every allocation
reuses pages the process already has: what the ``jemalloc`` / ``tcmalloc`` that PyTorch's CPU tuning guides preload
do, without a preload. The values computed do not change, bit for bit. The price: the process keeps its peak memory
until it exits (its resident size no longer falls after a peak), and a heap of blocks of many sizes can fragment.

Process-wide and sticky: it stays as the last call set it. ``False`` after ``True`` restores glibc's settings as
they stand after its warm-up (mappings from 32 MiB, trimming beyond 64 MiB free) and returns the free memory; a
process that never turned the switch on keeps glibc's own adaptive defaults. A no-op returning False where the C
library is not glibc (macOS, Windows, musl), and where another allocator has replaced glibc's ``malloc`` (jemalloc
or tcmalloc in ``LD_PRELOAD``): glibc's settings would then tune an allocator nobody calls, and those allocators
keep freed memory of their own accord.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["glibc_malloc_available", "keeps_host_memory", "set_keep_host_memory"]

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_MIB = 1 << 20
_WARM_MMAP_THRESHOLD = 32 * _MIB  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit systems
_WARM_TRIM_THRESHOLD = 2 * _WARM_MMAP_THRESHOLD  # glibc keeps the trim threshold at twice the mmap threshold
_DEFAULT_MMAP_MAX = 65536
_NEVER_TRIM = -1  # mallopt(3): -1 disables trimming completely

_kept = False


def _address(function) -> int | None:
    return ctypes.cast(function, ctypes.c_void_p).value


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has ``mallopt`` and ``gnu_get_libc_version``) and its ``malloc`` is the
    one this process calls, else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not all(hasattr(libc, name) for name in ("mallopt", "malloc_trim", "gnu_get_libc_version", "malloc")):
        return None
    try:
        process = ctypes.CDLL(None)  # symbols as the process resolves them: a preloaded malloc comes first
    except (OSError, TypeError):
        return None
    if _address(getattr(process, "malloc", None)) != _address(libc.malloc):
        return None  # malloc interposed (LD_PRELOAD=libjemalloc.so, libtcmalloc.so, ...)
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


def glibc_malloc_available() -> bool:
    """Whether this process's allocator is glibc's malloc, the one :func:`set_keep_host_memory` tunes (False with
    another allocator preloaded)."""
    return _libc() is not None


def keeps_host_memory() -> bool:
    """Whether :func:`set_keep_host_memory` has turned the switch on (and it took effect)."""
    return _kept


def set_keep_host_memory(keep: bool) -> bool:
    """Keep freed host memory for reuse (``keep=True``) or let glibc return large blocks to the kernel again (see the
    module docstring). Returns whether the process now keeps its memory: False where the allocator is not glibc's
    (another C library, or jemalloc / tcmalloc preloaded, which keep freed memory themselves)."""
    global _kept
    keep = bool(keep)
    libc = _libc()
    if libc is None or keep == _kept:
        return _kept
    if keep:
        ok = libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM)
    else:
        ok = (libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX) and libc.mallopt(_M_MMAP_THRESHOLD, _WARM_MMAP_THRESHOLD)
              and libc.mallopt(_M_TRIM_THRESHOLD, _WARM_TRIM_THRESHOLD))
        libc.malloc_trim(0)
    _kept = keep if ok else _kept
    return _kept
