"""Handing the agent's free heap memory back to the host, now and then.

glibc gives each thread that allocates (grpc's, the metrics server's, the engine pool's) an arena of its own
and returns an arena's memory only from its top. Freed blocks below a live one stay resident, so a
long-lived agent's RSS climbs in steps of about a megabyte that come back only partly (the two-hour soak:
Python's own arenas flat, the threads' arenas growing and shrinking). ``malloc_trim(0)`` walks every arena and
gives back each whole free page, wherever it lies. Orthanc calls it from a housekeeping thread and dask
recommends it for the same unmanaged growth; here it costs a fraction of a millisecond a minute.

It does not cure the soak's steps: with it the two-hour soak still climbed (+2.03 MiB/h), the threads'
arenas holding 3.4 MiB right after a trim, so what they keep there is live or only partly free pages. It
gives back what a burst strands (a log stream, a large file), which otherwise stays until the agent exits.

Elsewhere than glibc (musl has no malloc_trim) this does nothing.

``heap_usage`` tells the two apart on /metrics: the C heap's bytes in use and free, every arena summed
(glibc's ``mallinfo2``). In use climbing is a leak; free climbing while in use stays is fragmentation."""

from __future__ import annotations

import asyncio
import ctypes
import os
from collections.abc import Callable
from typing import NamedTuple

from common.logging import get

log = get("agent.heap")

PAGE = os.sysconf("SC_PAGE_SIZE")


def _malloc_trim() -> Callable[[int], int] | None:
    # The process's own symbols, the C library's among them: ctypes.util.find_library would run
    # ldconfig in a subprocess at every start to name the library the process already has.
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _malloc_trim()


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mallinfo2() -> Callable[[], _Mallinfo2] | None:
    try:
        info = ctypes.CDLL(None).mallinfo2  # glibc 2.33 on; the older mallinfo's ints wrap at 2 GiB
    except (OSError, AttributeError):
        return None
    info.argtypes = []
    info.restype = _Mallinfo2
    return info


_INFO = _mallinfo2()


class HeapUsage(NamedTuple):
    in_use: int
    """Bytes of live C heap blocks, the large ones glibc maps on their own included."""
    free: int
    """Bytes free in the arenas: held for reuse, resident or not (a trim leaves them, non-resident)."""


def heap_usage() -> HeapUsage | None:
    """The C heap summed over every arena; None where the C library cannot say. Takes each arena's lock in
    turn: microseconds for the agent's few arenas."""
    if _INFO is None:
        return None
    info = _INFO()
    return HeapUsage(info.uordblks + info.hblkhd, info.fordblks)


def trim_supported() -> bool:
    return _TRIM is not None


def resident_bytes() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE


def release_free_memory() -> int:
    """Give every whole free page of the C heap back to the host; the bytes RSS went down by (0 where
    nothing could be given back, or malloc_trim does not exist)."""
    if _TRIM is None:
        return 0
    before = resident_bytes()
    _TRIM(0)
    return max(0, before - resident_bytes())


async def release_periodically(interval_s: float) -> None:
    """Trim every ``interval_s`` seconds; returns at once when switched off (0) or unsupported. Runs on the
    loop: a trim of the agent's few-MiB heaps takes well under a millisecond, less than a thread hand-off,
    and a pool thread would bring an arena of its own."""
    if interval_s <= 0 or _TRIM is None:
        if interval_s > 0:
            log.info("no malloc_trim in this C library; free heap memory is left to the allocator")
        return
    while True:
        await asyncio.sleep(interval_s)
        try:
            released = release_free_memory()
        except OSError as exc:  # /proc unreadable: the trim has run, only its figure is lost
            log.warning("could not read the agent's RSS", error=str(exc))
            continue
        if released:
            log.debug("free heap memory handed back", released_kib=released // 1024)
