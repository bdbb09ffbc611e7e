"""Process-wide allocator setting for CPU-heavy workers (rendering, preprocessing, benchmarks).

glibc's malloc serves large blocks with fresh ``mmap``s and hands freed memory at the top of the heap
back to the OS (``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD``, both adaptive and small by default).
PyTorch's CPU tensors of a few MB are then new pages almost every time they are allocated, and each 4 KiB
page costs a page fault and zeroing on first touch. A 32-frame 256 px NMFC batch allocates ~100 MB of
temporaries this way, tens of thousands of minor faults per batch, and keeping freed memory removes
nearly all of them (``benchmarks/rasterize.py`` reports the setting with its timings). The price is a
resident set that stays at its peak (freed memory is kept for reuse), which suits worker processes.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc caps the mmap threshold at 32 MiB on 64-bit systems (HEAP_MAX_SIZE / 2); larger values are refused.
_MAX_MMAP_THRESHOLD = 32 << 20


def retain_freed_memory(trim_threshold_bytes: int = 1 << 30) -> bool:
    """Keeps freed heap memory in this process for reuse (glibc only; idempotent).

    Blocks up to 32 MiB come from the heap instead of fresh mmaps, and up to ``trim_threshold_bytes``
    of free memory at the top of the heap is kept rather than returned to the OS. Returns True when the
    settings were applied, False where the C library is not glibc (nothing changes there).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    trim = min(int(trim_threshold_bytes), 2**31 - 1)
    return bool(mallopt(_M_MMAP_THRESHOLD, _MAX_MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, trim))
