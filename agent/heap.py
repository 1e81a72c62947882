"""Keeping the agent's C heap small over months: one shared arena, free pages handed back, figures.

glibc gives each thread that allocates (grpc's, the metrics server's, the pool's) an arena of its own, up to
eight per core, and keeps what a thread freed in that thread's arena for its next allocation. The two-hour
soak climbed +1.7 to +2.0 MiB/h this way, all of it in the threads' arenas, in steps that a minutely
``malloc_trim`` did not flatten. With every thread in the main arena (``limit_arenas(1)``, glibc's
M_ARENA_MAX; what grpc's maintainers advise for the same growth, grpc/grpc#40817) one thread's free space
serves the next: the same soak climbed +1.10 MiB/h, most of it at its coordinator and engine restarts, and
+0.43 after them. The agent's threads take turns under Python's lock anyway, so sharing one arena costs no
measurable CPU.

``malloc_trim(0)`` walks every arena and gives back each whole free page, wherever it lies: what a burst
strands (a log stream, a large file) leaves the RSS within a minute instead of staying until the agent exits.
It costs a fraction of a millisecond a minute.

``heap_usage`` serves the C heap's bytes in use and free on /metrics, every arena summed (glibc's
``mallinfo2``): in use climbing is a leak; free climbing while in use stays is fragmentation.

Elsewhere than glibc (musl has neither mallopt's M_ARENA_MAX nor malloc_trim) each of these does nothing."""

from __future__ import annotations

import asyncio
import ctypes
import os
from collections.abc import Callable
from typing import Any, NamedTuple, cast

from common.logging import get

log = get("agent.heap")

PAGE = os.sysconf("SC_PAGE_SIZE")


def _libc(name: str, argtypes: list[type], restype: type | None) -> Callable[..., Any] | None:
    """A function of the C library, or None where it has none of that name (musl, a static build)."""
    # The process's own symbols, the C library's among them: ctypes.util.find_library would run
    # ldconfig in a subprocess at every start to name the library the process already has.
    try:
        function = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argtypes
    function.restype = restype
    return cast(Callable[..., Any], function)


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


_TRIM = _libc("malloc_trim", [ctypes.c_size_t], ctypes.c_int)
_INFO = _libc("mallinfo2", [], _Mallinfo2)  # glibc 2.33 on; the older mallinfo's ints wrap at 2 GiB
_MALLOPT = _libc("mallopt", [ctypes.c_int, ctypes.c_int], ctypes.c_int)
M_ARENA_MAX = -8  # glibc's malloc.h


def limit_arenas(count: int) -> bool:
    """Let every thread share at most ``count`` malloc arenas (0: glibc's own limit, eight per core); False
    where the C library cannot. Called before the agent starts its threads: a thread keeps the arena it
    first allocated from."""
    if count <= 0 or _MALLOPT is None:
        return False
    return bool(_MALLOPT(M_ARENA_MAX, count))


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
