"""The agent hands back memory its threads freed: what glibc keeps in a thread's arena below a live block
(the soak's RSS steps) leaves the RSS once trimmed, by a call and by the agent's periodic task."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

import pytest

from agent.heap import heap_usage, release_free_memory, release_periodically, resident_bytes, trim_supported

MIB = 1 << 20

pytestmark = pytest.mark.skipif(not trim_supported(), reason="no malloc_trim in this C library (not glibc)")


def strand_in_a_thread_arena(mib: int) -> bytes:
    """Allocate ``mib`` MiB of 4 KiB blocks from a thread of its own (glibc gives it an arena), free all but
    the last: the free space lies below a live block, so free() alone cannot give it back. Returns that block,
    which the caller keeps alive."""
    kept: list[bytes] = []

    def work() -> None:
        blocks = [bytes(4000) for _ in range(mib * 256)]
        kept.append(bytes(4000))
        del blocks

    t = threading.Thread(target=work)
    t.start()
    t.join()
    return kept[0]


def test_memory_freed_in_a_thread_arena_is_handed_back() -> None:
    before = resident_bytes()
    top = strand_in_a_thread_arena(48)
    stranded = resident_bytes() - before
    # The allocator kept what the thread freed: without a trim the host does not get it back.
    assert stranded >= 40 * MIB, stranded / MIB
    released = release_free_memory()
    assert released >= 40 * MIB, released / MIB
    assert resident_bytes() - before < 8 * MIB
    del top


async def test_the_agents_periodic_task_hands_it_back() -> None:
    before = resident_bytes()
    top = strand_in_a_thread_arena(48)
    assert resident_bytes() - before >= 40 * MIB
    task = asyncio.create_task(release_periodically(0.05))
    try:
        for _ in range(100):
            await asyncio.sleep(0.02)
            if resident_bytes() - before < 8 * MIB:
                break
        assert resident_bytes() - before < 8 * MIB, (resident_bytes() - before) / MIB
    finally:
        task.cancel()
    del top


async def test_switched_off_it_returns_at_once() -> None:
    await asyncio.wait_for(release_periodically(0), timeout=1)


def test_heap_usage_tells_live_blocks_from_stranded_free_space() -> None:
    """What /metrics serves: 48 MiB stranded in a thread's arena shows as free, not in use; kept blocks show
    as in use."""
    before = heap_usage()
    assert before is not None
    top = strand_in_a_thread_arena(48)
    stranded = heap_usage()
    assert stranded is not None
    assert stranded.free - before.free >= 40 * MIB, (stranded.free - before.free) / MIB
    assert abs(stranded.in_use - before.in_use) < 4 * MIB, (stranded.in_use - before.in_use) / MIB
    kept = [bytes(4000) for _ in range(16 * 256)]
    grown = heap_usage()
    assert grown is not None
    assert grown.in_use - stranded.in_use >= 15 * MIB, (grown.in_use - stranded.in_use) / MIB
    del kept, top


ARENAS_IN_A_FRESH_PROCESS = """
import ctypes, sys, tempfile, threading
from agent.heap import limit_arenas
if int(sys.argv[1]):
    assert limit_arenas(int(sys.argv[1]))
together = threading.Barrier(4)
kept = []
def work():
    together.wait()  # all four alive at once: glibc gives each its own arena unless capped
    kept.append([bytes(4000) for _ in range(256)])
    together.wait()
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
with tempfile.NamedTemporaryFile() as out:
    stream = libc.fopen(out.name.encode(), b"w")
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    print(open(out.name).read().count("<heap nr="))
"""


def arenas_after_four_threads(limit: int) -> int:
    """The malloc arenas of a fresh Python that capped them at ``limit`` (0: not capped) before four threads
    allocated at once, as glibc's malloc_info counts them."""
    done = subprocess.run(
        [sys.executable, "-c", ARENAS_IN_A_FRESH_PROCESS, str(limit)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return int(done.stdout)


def test_threads_share_the_arenas_the_agent_allows() -> None:
    assert arenas_after_four_threads(0) >= 5  # glibc's own way: the main arena and one per thread
    assert arenas_after_four_threads(1) == 1
    assert arenas_after_four_threads(2) == 2
