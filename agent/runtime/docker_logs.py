"""A container's output from the engine: read from the socket only as the consumer asks for it, so a chatty
container is slowed at the engine's socket, never buffered without bound here."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

from agent.runtime.base import RuntimeFailure
from agent.runtime.engine_api import EngineClient, EngineError, path
from agent.runtime.engine_http import EngineStream, ProtocolError

_FRAME = struct.Struct(">BxxxL")  # stream (0 stdin, 1 stdout, 2 stderr), then the payload's length


class DockerLogs:
    """Async iterator over a container's output (each write of the container as the engine frames it);
    ``aclose()`` stops it."""

    def __init__(
        self, engine: Callable[[], EngineClient], container_id: str, tail: int, follow: bool
    ) -> None:
        self._engine = engine
        self._container_id = container_id
        self._params = {
            "stdout": True,
            "stderr": True,
            "follow": follow,
            "tail": tail if tail >= 0 else "all",
        }
        self._stream: EngineStream | None = None
        self._framed = True
        self._pending = bytearray()
        self._offset = 0  # where the next frame starts in _pending
        self._done = False

    @property
    def ended(self) -> bool:
        return self._done

    def __aiter__(self) -> DockerLogs:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        try:
            if self._stream is None:
                await self._open()
            stream = self._stream
            assert stream is not None
            chunk = await (self._frame(stream) if self._framed else stream.read())
        except EngineError as exc:
            await self.aclose()
            raise RuntimeFailure("the container is gone" if exc.status == 404 else str(exc)) from exc
        except (RuntimeFailure, ProtocolError, OSError, asyncio.IncompleteReadError) as exc:
            if self._done:  # closed while we read
                raise StopAsyncIteration from None
            await self.aclose()
            raise RuntimeFailure(f"reading the container's output failed: {exc}") from exc
        if not chunk:
            await self.aclose()
            raise StopAsyncIteration
        return chunk

    async def _open(self) -> None:
        engine = self._engine()
        attrs = await engine.call("GET", path("/containers/{}/json", self._container_id))
        # Without a TTY the engine frames stdout and stderr apart; with one the output is raw.
        self._framed = not (attrs.get("Config") or {}).get("Tty", False)
        logs = path("/containers/{}/logs", self._container_id)
        stream = await engine.stream("GET", logs, self._params)
        if self._done:  # closed while it was opening
            stream.close()
            raise StopAsyncIteration
        self._stream = stream

    async def _frame(self, stream: EngineStream) -> bytes:
        """The next frame's payload (a frame's header and payload may come in pieces); b"" at the end."""
        while True:
            start = self._offset
            if len(self._pending) - start >= _FRAME.size:
                _, size = _FRAME.unpack_from(self._pending, start)
                end = start + _FRAME.size + size
                if len(self._pending) >= end:
                    self._offset = end
                    if size:
                        return bytes(self._pending[start + _FRAME.size : end])
                    continue
            del self._pending[: self._offset]  # what was handed out goes; the rest of a frame stays
            self._offset = 0
            data = await stream.read()
            if not data:
                return b""
            self._pending += data

    async def aclose(self) -> None:
        self._done = True
        self._pending = bytearray()
        if self._stream is not None:
            self._stream.close()
            self._stream = None
