"""The allocator told to keep the memory a process reuses, so large tensors stop paying page faults.

glibc hands an allocation above its mmap threshold (128 KiB, raised on its own up to 32 MiB) fresh pages from
the kernel, and returns freed memory at the top of the heap once more than 128 KiB is free. A tune over a
large file allocates and frees tensors of hundreds of MiB chunk after chunk and epoch after epoch, so each one
was mapped, zero-filled page by page and unmapped again: a 300,000-row tune spent a third of its CPU in the
kernel (11-12 million minor faults). With the thresholds below the freed memory stays in the process for the
next chunk (benchmark row `allocator`: before and after, wall and system time, faults, peak memory).

Set in-process with `mallopt` by every entry point before torch allocates (`python -m training`, the tests), and
through the environment for processes started fresh (TorchServe's workers read it at their start).
`ATTENTION_SERVE_MALLOC=system` leaves glibc's defaults; a `MALLOC_*_` variable the user set wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

OPT_OUT = "ATTENTION_SERVE_MALLOC"  # "system": glibc's own thresholds
# mallopt's parameters (malloc.h) and the values kept: an int each, so 2 GiB is the most a threshold takes.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 2**31 - 1  # below 2 GiB every allocation comes from the heap, reused when freed
TRIM_THRESHOLD = 2**31 - 1  # the heap gives back to the kernel only past 2 GiB free at its top
TOP_PAD = 512 * 2**20  # the heap grows 512 MiB at a time (address space: pages are resident once touched)
ENVIRONMENT = {  # the same, for a process started fresh (glibc reads these at its start)
    "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
    "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
    "MALLOC_TOP_PAD_": str(TOP_PAD),
}


def chosen() -> bool:
    """Whether to set the thresholds: not when the user opted out or set any of them."""
    return os.environ.get(OPT_OUT) != "system" and not any(name in os.environ for name in ENVIRONMENT)


def keep_freed_memory() -> bool:
    """Set this process's thresholds (glibc only); whether they were set."""
    if not chosen():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): its allocator's defaults stay
        return False
    settings = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD))
    return all(mallopt(ctypes.c_int(name), ctypes.c_int(value)) == 1 for name, value in settings)


def child_environment() -> dict[str, str]:
    """The variables that give a process started fresh the same thresholds (empty when not chosen)."""
    return dict(ENVIRONMENT) if chosen() else {}
