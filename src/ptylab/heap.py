"""Hand freed heap memory back to the operating system.

Stitching a large scan allocates and frees the same few large temporaries tile after tile. glibc
keeps freed blocks of up to 32 MB in its heap for reuse, and fragmentation then lets the resident
set creep up with the number of tiles although nothing is retained: measured on a 40,000-patch
scan, +308 MB after stitching against +157 MB with a trim after each tile. Trimming costs
microseconds; elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def trim() -> None:
    """Return the heap's free pages to the system (glibc's malloc_trim); a no-op without glibc."""
    fn = _malloc_trim()
    if fn is not None:
        fn(0)
