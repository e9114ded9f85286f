"""Give the C allocator's free pages back to the kernel after a burst (glibc's ``malloc_trim``).

A restart with thousands of objects present, or a burst of new runs, allocates the listing, the watch events
and the passes' API responses at once; CPython frees them, but glibc keeps the freed pages in its heap, so
the process's RSS stays at the burst's high-water mark although the memory is free. ``malloc_trim(0)``
returns every free page (``madvise(MADV_DONTNEED)``) — the same call CPython-based services such as Ray
make after large frees. Where the C library has no ``malloc_trim`` (musl), nothing happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

_trim: Callable[[int], int] | None = None
_loaded = False


def _load() -> Callable[[int], int] | None:
    global _trim, _loaded
    if not _loaded:
        _loaded = True
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            fn = libc.malloc_trim
            fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
            _trim = fn
        except (OSError, AttributeError):
            _trim = None
    return _trim


def trim() -> bool:
    """``malloc_trim(0)``; True when the C library has it (and it released something)."""
    fn = _load()
    if fn is None:
        return False
    t0 = time.monotonic()
    released = bool(fn(0))
    log.debug("malloc_trim: released=%s in %.1f ms", released, 1000 * (time.monotonic() - t0))
    return released
