"""Keep freed memory for reuse instead of handing it back to the system (glibc's malloc).

A training step allocates and frees the same large arrays every step. By default glibc returns
large freed blocks to the system, and how much it keeps depends on the order of earlier
allocations; the system then hands out fresh zeroed pages, one page fault per 4 KiB, on the
next step. For the language model (H = 256, N = 32) that was 3,500 to 5,000 page faults and
13% to 29% of each training step, and which runs hit it changed with unrelated changes of
allocation order. :func:`keep_freed_memory` fixes both thresholds, so that a loop reuses its
own memory. ``rnnkit``'s command line calls it; a script of one's own can too. It changes the
whole process's allocator, which is why the library does not call it on import.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)


def keep_freed_memory(largest: int = 64 << 20, kept: int = 256 << 20) -> bool:
    """Blocks below ``largest`` bytes come from the heap, and up to ``kept`` freed bytes at its
    top stay with the process. Returns False where the C library has no ``mallopt`` (not
    glibc), changing nothing."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, largest)) and bool(mallopt(_M_TRIM_THRESHOLD, kept))
