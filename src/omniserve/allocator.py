"""What omniserve asks of the C allocator (glibc's; elsewhere every call here is a no-op).

- Blocks of a MiB or more are mapped from the system on their own (``mmap``), always: a
  request body or a decoded image then grows by remapping pages instead of being copied to a
  larger block again and again (which, once glibc's adaptive threshold had risen past the
  block's size, held the event loop for tens of milliseconds on a 60 MB body), and it goes back
  to the system the moment it is freed.
- ``give_back_memory`` returns the heap's free pages after large decodes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache

MAP_FROM = 1024 * 1024
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc's malloc.h


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


@cache
def map_large_blocks() -> bool:
    """Blocks of ``MAP_FROM`` bytes or more are mapped on their own from now on (setting the
    threshold also turns glibc's adaptive one off). Once per process; False where unsupported."""
    libc = _libc()
    return libc is not None and bool(libc.mallopt(_M_MMAP_THRESHOLD, MAP_FROM))


def give_back_memory() -> None:
    """Return the C heap's free pages to the system (``malloc_trim``). Large decodes leave
    arenas full of freed blocks that glibc keeps otherwise."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
