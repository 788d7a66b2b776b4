"""Give the memory an ended session held back: collect its reference cycles, then return the
freed pages to the operating system.

A session's peer connection (aiortc's transports, receivers, jitter buffers, SRTP sessions,
codec contexts) ends in reference cycles that only Python's full collection frees, and that
one runs rarely: churn grew the server by ~1.2 MB a session, then dropped 45 MB at once after
44 sessions, when it finally ran. A full collection over the server's ~150 k long-lived objects
(modules, models) stalls the event loop ~70 ms, so those are frozen (``gc.freeze``) whenever no
session runs, and the collection after a session ends only walks what was made since: the live
sessions' objects and the ended one's. glibc's malloc then keeps the freed chunks in its
arenas; ``malloc_trim(0)`` hands them back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import time
from typing import Callable

log = logging.getLogger(__name__)


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]
        trim.restype = ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def collect_garbage(idle: bool) -> tuple[int, float]:
    """Free unreachable cycles; returns (objects freed, seconds). ``idle`` (no session runs, so a
    stall harms nobody): collect everything, then freeze what survives, so later collections
    skip it. Otherwise collect only what is not frozen."""
    started = time.perf_counter()
    if idle:
        gc.unfreeze()  # what was frozen and has died since (a deleted channel, a replaced avatar) too
    freed = gc.collect()
    if idle:
        gc.freeze()
    return freed, time.perf_counter() - started


def return_freed_memory() -> float | None:
    """Return the heap's free pages to the system; the seconds it took, or None where unsupported."""
    if _TRIM is None:
        return None
    started = time.perf_counter()
    _TRIM(0)
    return time.perf_counter() - started
