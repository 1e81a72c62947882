"""A container's output through the docker SDK: the stream blocks for its whole life, so it is read on a
thread of its own, which hands chunks to the loop and waits when the loop has CHUNKS_AHEAD of them not yet
taken: a chatty container is slowed at the engine's socket, never buffered without bound here."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

import docker.errors

from agent.runtime.base import RuntimeFailure

#: Chunks the reader thread may hand over before the consumer takes them.
CHUNKS_AHEAD = 32


class DockerLogs:
    """Async iterator over a container's output (bytes as the engine sends them); ``aclose()`` stops it."""

    def __init__(self, client: Callable[[], Any], container_id: str, tail: int, follow: bool) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        self._room = threading.Semaphore(CHUNKS_AHEAD)
        self._lock = threading.Lock()
        self._stream: Any = None
        self._closed = False
        self._thread = threading.Thread(
            target=self._pump,
            args=(client, container_id, tail, follow),
            name=f"docker-logs-{container_id[:12]}",
            daemon=True,
        )
        self._thread.start()

    def _hand(self, item: bytes | BaseException | None) -> bool:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed
            return False
        return True

    def _pump(self, client: Callable[[], Any], container_id: str, tail: int, follow: bool) -> None:
        end: BaseException | None = None
        stream: Any = None
        try:
            stream = client().api.logs(
                container_id, stream=True, follow=follow, tail=tail, stdout=True, stderr=True
            )
            with self._lock:
                if self._closed:
                    stream.close()
                    return
                self._stream = stream
            for chunk in stream:
                while not self._room.acquire(timeout=0.5):
                    if self._closed:
                        return
                if self._closed or not self._hand(bytes(chunk)):
                    return
        except docker.errors.NotFound:
            end = RuntimeFailure("the container is gone")
        except Exception as exc:
            if not self._closed:
                end = RuntimeFailure(f"reading the container's output failed: {exc}")
        finally:
            with contextlib.suppress(Exception):
                if stream is not None:
                    stream.close()
        self._hand(end)

    def __aiter__(self) -> DockerLogs:
        return self

    async def __anext__(self) -> bytes:
        item = await self._queue.get()
        if isinstance(item, bytes):
            self._room.release()
            return item
        if item is None:
            raise StopAsyncIteration
        raise item

    async def aclose(self) -> None:
        with self._lock:
            self._closed = True
            stream, self._stream = self._stream, None
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()  # wakes the thread's blocked read
        await asyncio.to_thread(self._thread.join, 5.0)
