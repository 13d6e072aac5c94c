"""Keep freed memory in the process heap while a forward loop runs (glibc only).

A forward pass allocates and frees the same activation buffers for every batch. glibc serves
each buffer above its mmap threshold with a fresh mapping and unmaps it when freed, and trims
the heap top back to the system, so the next batch touches new pages: about 175 page faults per
image for the compact CNN at 32 (batch 64), 4,400 for resnet18 at 224. Inside `retained_heap` the
buffers come from the heap and stay there: no faults, and the same forward runs 1.7 times faster
at 32 and 1.6 times at 224 on two cores (bench/results/heap.md), holding the loop's peak (about
0.5 GiB more for resnet18 at 224) until it ends. This is what PyTorch's CPU tuning guide gets by
preloading jemalloc or tcmalloc, done with glibc's own `mallopt`, so nothing has to be installed.

Forward loops use it: embedding, and the predict stage's inference (patch encoding, held-out
probabilities, layer features), whose patch encoding showed the same faults in some runs.
Training allocates differently and ran no faster, and a service that kept its peak heap for
life would hold memory it no longer needs. On leaving, the heap is trimmed and mmap comes back.
glibc's adaptive threshold cannot be switched back on once `mallopt` was called, so it is fixed
where that adaptation ends up (32 MiB); training with that setting took the same time as with
glibc's defaults.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4

GLIBC_MMAP_MAX = 65536  # glibc's default count of mmapped chunks
GLIBC_MAX_MMAP_THRESHOLD = 32 * 1024 * 1024  # where glibc's dynamic threshold stops growing
NEVER_TRIM = 2**31 - 1  # mallopt takes a C int; no heap top grows this large between batches


@dataclass
class _Retention:
    lock: threading.Lock
    users: int = 0


_state = _Retention(threading.Lock())


def _glibc() -> ctypes.CDLL | None:
    if not hasattr(os, "confstr") or "CS_GNU_LIBC_VERSION" not in os.confstr_names:
        return None
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return None
    except (OSError, ValueError):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


_LIBC = _glibc()


def supported() -> bool:
    """False on musl, macOS and Windows, where `retained_heap` changes nothing."""
    return _LIBC is not None


def is_retained() -> bool:
    return _state.users > 0


def _retain() -> None:
    _LIBC.mallopt(M_MMAP_MAX, 0)
    _LIBC.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)


def _release() -> None:
    _LIBC.mallopt(M_MMAP_MAX, GLIBC_MMAP_MAX)
    _LIBC.mallopt(M_MMAP_THRESHOLD, GLIBC_MAX_MMAP_THRESHOLD)
    _LIBC.mallopt(M_TRIM_THRESHOLD, 2 * GLIBC_MAX_MMAP_THRESHOLD)
    _LIBC.malloc_trim(ctypes.c_size_t(0))


@contextmanager
def retained_heap() -> Iterator[None]:
    """Freed buffers stay in the heap until the outermost of nested or concurrent users leaves."""
    if _LIBC is None:
        yield
        return
    with _state.lock:
        _state.users += 1
        if _state.users == 1:
            _retain()
    try:
        yield
    finally:
        with _state.lock:
            _state.users -= 1
            if _state.users == 0:
                _release()
