"""Container output for the coordinator's log requests, bounded so a chatty container cannot starve the
session: at most MAX_STREAMS at once per node, chunks of whole lines of at most CHUNK_BYTES, and all of a
node's streams together within ``rate_bps`` (a token bucket). Heartbeats and events never wait behind log
chunks (the session's outbox sends them first); a stream waits for room instead of buffering."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from agent.runtime.base import Runtime, RuntimeFailure
from common.logging import get

log = get("agent.logs")

MAX_STREAMS = 4
CHUNK_BYTES = 16 * 1024
#: Tail lines one request may ask for (the coordinator refuses more before asking).
MAX_TAIL = 10_000
#: A line longer than this is cut (a binary blob on stdout must not become one giant chunk).
MAX_LINE = CHUNK_BYTES

#: (request id, data, end, error): one chunk on its way to the coordinator; waits while the outbox is full.
Send = Callable[[str, bytes, bool, str], Awaitable[None]]
#: instance id -> its container id on this host, or None.
Find = Callable[[str], Awaitable[str | None]]


class TokenBucket:
    """``rate`` bytes a second with a burst of one second's worth, shared by every stream of the node."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.tokens = rate
        self.clock = clock
        self.at = clock()

    async def take(self, size: int) -> None:
        while True:
            now = self.clock()
            self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
            self.at = now
            if self.tokens >= size or self.tokens >= self.rate:
                self.tokens -= size
                return
            await asyncio.sleep((min(size, self.rate) - self.tokens) / self.rate)


def whole_lines(buffer: bytearray, final: bool) -> list[bytes]:
    """Chunks of whole lines taken off the front of ``buffer`` (what is left is a line still being
    written), each at most CHUNK_BYTES; ``final``: the rest too. Over-long lines are cut at MAX_LINE."""
    chunks: list[bytes] = []
    while True:
        cut = buffer.rfind(b"\n", 0, CHUNK_BYTES) + 1
        if cut == 0:
            if len(buffer) >= MAX_LINE or (final and buffer):
                cut = min(len(buffer), MAX_LINE)
            else:
                return chunks
        chunks.append(bytes(buffer[:cut]))
        del buffer[:cut]


class LogStreams:
    def __init__(self, runtime: Runtime, find: Find, send: Send, rate_bps: float = 256 * 1024) -> None:
        self.runtime = runtime
        self.find = find
        self.send = send
        self.bucket = TokenBucket(rate_bps)
        self.active: dict[str, asyncio.Future[None]] = {}
        self._refusals: set[asyncio.Future[None]] = set()

    def handle(self, request_id: str, instance_id: str, tail: int, follow: bool, cancel: bool) -> None:
        if cancel:
            task = self.active.pop(request_id, None)
            if task is not None:
                task.cancel()
            return
        if request_id in self.active:
            return  # a repeat of one already running
        if len(self.active) >= MAX_STREAMS:
            work = self.send(request_id, b"", True, f"this node already streams {MAX_STREAMS} logs")
        else:
            work = self._stream(request_id, instance_id, min(tail, MAX_TAIL), follow)
        task = asyncio.ensure_future(work)
        if len(self.active) < MAX_STREAMS:
            self.active[request_id] = task
            task.add_done_callback(lambda _: self.active.pop(request_id, None))
        else:
            self._refusals.add(task)
            task.add_done_callback(self._refusals.discard)

    async def _stream(self, request_id: str, instance_id: str, tail: int, follow: bool) -> None:
        error = ""
        try:
            container = await self.find(instance_id)
            if container is None:
                error = "the instance has no container on this node"
            else:
                stream = self.runtime.logs(container, tail, follow)
                buffer = bytearray()
                try:  # from here on the stream's thread is stopped whatever ends this
                    await self.send(request_id, b"", False, "")  # taken: the reader knows this agent streams
                    async for data in stream:
                        buffer += data
                        for chunk in whole_lines(buffer, final=False):
                            await self.bucket.take(len(chunk))
                            await self.send(request_id, chunk, False, "")
                finally:
                    await stream.aclose()
                for chunk in whole_lines(buffer, final=True):
                    await self.send(request_id, chunk, False, "")
        except asyncio.CancelledError:
            raise  # cancelled by the coordinator or the session's end: nobody is listening
        except RuntimeFailure as exc:
            error = str(exc)
        except Exception as exc:
            log.exception("a log stream failed", request_id=request_id)
            error = f"reading the output failed: {exc}"
        await self.send(request_id, b"", True, error)

    async def close(self) -> None:
        """The session ended: every stream with it (its listener went with the session)."""
        tasks = list(self.active.values())
        self.active.clear()
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
