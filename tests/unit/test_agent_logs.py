"""The agent's side of log requests over the in-memory runtime: the tail, what follows, cancelling, the
bound on streams per node and on bytes per second, and chunks of whole lines."""

from __future__ import annotations

import asyncio
import time

from agent.logs import CHUNK_BYTES, MAX_STREAMS, LogStreams, whole_lines
from agent.runtime.base import ContainerSpec
from agent.runtime.memory import MemoryRuntime


class Sent:
    def __init__(self) -> None:
        self.chunks: dict[str, list[tuple[bytes, bool, str]]] = {}

    async def __call__(self, request_id: str, data: bytes, end: bool, error: str) -> None:
        self.chunks.setdefault(request_id, []).append((data, end, error))

    def text(self, request_id: str) -> bytes:
        return b"".join(d for d, _, _ in self.chunks.get(request_id, []))

    def ended(self, request_id: str) -> tuple[bool, str]:
        last = self.chunks.get(request_id, [(b"", False, "")])[-1]
        return last[1], last[2]


async def container(runtime: MemoryRuntime, iid: str = "i1") -> str:
    spec = ContainerSpec(
        instance_id=iid, node_id="n1", name=iid, image="img", env={}, memory_mib=0, cpu_percent=0
    )
    return await runtime.create(spec)


async def until(check: object, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.01)


def streams(runtime: MemoryRuntime, sent: Sent, rate: float = 1e9) -> LogStreams:
    async def find(iid: str) -> str | None:
        return next((c.container_id for c in runtime.containers.values() if c.instance_id == iid), None)

    return LogStreams(runtime, find, sent, rate_bps=rate)


async def test_the_tail_then_what_follows_until_cancelled() -> None:
    runtime, sent = MemoryRuntime(), Sent()
    cid = await container(runtime)
    runtime.output[cid] = [f"line {n}\n".encode() for n in range(10)]
    logs = streams(runtime, sent)
    logs.handle("once", "i1", 3, False, False)
    await until(lambda: sent.ended("once")[0])
    assert sent.text("once") == b"line 7\nline 8\nline 9\n" and sent.ended("once") == (True, "")
    logs.handle("live", "i1", 1, True, False)
    await until(lambda: sent.text("live") == b"line 9\n")
    runtime.output[cid].append(b"line 10\n")
    await until(lambda: sent.text("live") == b"line 9\nline 10\n")
    logs.handle("live", "", 0, False, True)  # cancel
    await until(lambda: not logs.active)
    runtime.output[cid].append(b"line 11\n")
    await asyncio.sleep(0.1)
    assert b"line 11" not in sent.text("live")


async def test_no_container_ends_with_the_reason() -> None:
    runtime, sent = MemoryRuntime(), Sent()
    streams(runtime, sent).handle("r", "nobody", 10, False, False)
    await until(lambda: sent.ended("r")[0])
    assert sent.ended("r") == (True, "the instance has no container on this node")


async def test_at_most_max_streams_at_once_and_close_ends_them() -> None:
    runtime, sent = MemoryRuntime(), Sent()
    await container(runtime)
    logs = streams(runtime, sent)
    for n in range(MAX_STREAMS + 1):
        logs.handle(f"r{n}", "i1", 0, True, False)
    await until(lambda: sent.ended(f"r{MAX_STREAMS}")[0])
    assert "already streams" in sent.ended(f"r{MAX_STREAMS}")[1]
    assert len(logs.active) == MAX_STREAMS
    await logs.close()
    assert not logs.active


async def test_a_chatty_container_is_held_to_the_rate() -> None:
    runtime, sent = MemoryRuntime(), Sent()
    cid = await container(runtime)
    runtime.output[cid] = [b"x" * 1023 + b"\n"] * 48  # 48 KiB
    began = time.monotonic()
    streams(runtime, sent, rate=16 * 1024).handle("r", "i1", 48, False, False)
    await until(lambda: sent.ended("r")[0], 10)
    assert len(sent.text("r")) == 48 * 1024
    assert time.monotonic() - began >= 1.5  # a burst of 16 KiB, then 16 KiB a second


def test_chunks_are_whole_lines_and_a_runaway_line_is_cut() -> None:
    buffer = bytearray(b"a\nbb\nccc")
    assert whole_lines(buffer, final=False) == [b"a\nbb\n"] and buffer == b"ccc"
    assert whole_lines(buffer, final=True) == [b"ccc"] and buffer == b""
    many = bytearray(b"y" * 100 + b"\n") * 400  # 40 KiB of lines
    chunks = whole_lines(many, final=False)
    assert all(len(c) <= CHUNK_BYTES and c.endswith(b"\n") for c in chunks)
    assert b"".join(chunks) == (b"y" * 100 + b"\n") * 400
    runaway = bytearray(b"z" * (CHUNK_BYTES + 10))
    assert whole_lines(runaway, final=False) == [b"z" * CHUNK_BYTES] and runaway == b"z" * 10
