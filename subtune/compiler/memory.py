"""The compiler's own memory: what the report records of it, and freed memory given back.

A compile of 100 tasks holds gigabytes of weights, copied from one form to the next (task files,
the lowered module, the exported graph, the runtime that verifies it); each form is dropped as
soon as the next exists. Two things make that visible and real:

    peak_rss_mib        the process's peak resident memory so far, recorded after each step in the
                        report (`peak_rss_mib`), so the step that set the peak shows
    return_freed_memory glibc keeps freed blocks for reuse instead of handing them back, so a
                        dropped copy would still count, and the next copy might not fit in its
                        holes; malloc_trim gives them back (a no-op where the C library is not glibc)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import sys


def peak_rss_mib() -> int | None:
    """The process's peak resident memory so far, MiB; None where the platform does not say."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / 2**20 if sys.platform == "darwin" else peak / 2**10)  # bytes on macOS, KiB on Linux


def return_freed_memory() -> None:
    """Collect reference cycles (the exporter's objects hold tensors in them), then give the C
    library's free blocks back to the system."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim  # glibc only: musl has no malloc_trim
    except (OSError, AttributeError):
        return None
