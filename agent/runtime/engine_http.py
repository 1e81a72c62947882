"""HTTP/1.1 on one connection to the Docker engine: a request out, a response's head and body in.

Only what the engine's API uses: JSON bodies with a length, responses framed by Content-Length, chunked
transfer (streams, and answers of unknown length) or the connection's end. Anything else the engine (or a
proxy in front of it) sends is a ProtocolError, never a half-read connection put back for reuse.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

LINE_LIMIT = 64 * 1024
_READ_SIZE = 64 * 1024


class ProtocolError(Exception):
    """The engine's answer is not HTTP this client understands, or it ended early."""


class Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def usable(self) -> bool:
        """False once the engine closed it (the loop has seen the EOF) or it broke."""
        return not self.reader.at_eof() and self.reader.exception() is None and not self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


class Head:
    """A response's status and headers (names lower-cased); its body is read from the connection after."""

    __slots__ = ("headers", "status")

    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status, self.headers = status, headers

    @property
    def chunked(self) -> bool:
        return "chunked" in self.headers.get("transfer-encoding", "").lower()

    @property
    def length(self) -> int | None:
        value = self.headers.get("content-length")
        if value is None or self.chunked:
            return None
        if not value.isdigit():
            raise ProtocolError(f"a Content-Length of {value!r}")
        return int(value)

    @property
    def keeps_alive(self) -> bool:
        return self.headers.get("connection", "").lower() != "close"

    @property
    def json(self) -> bool:
        return "json" in self.headers.get("content-type", "")


async def send(
    connection: Connection,
    method: str,
    target: str,
    body: bytes | None,
    headers: dict[str, str] | None = None,
) -> Head:
    """Write the request and read the response's head. ConnectionResetError when the engine closed the
    connection before answering (a kept connection it dropped meanwhile)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: docker", "User-Agent: moorage-agent"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    elif method in ("POST", "PUT"):
        lines.append("Content-Length: 0")
    connection.writer.write("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + (body or b""))
    await connection.writer.drain()
    status_line = await connection.reader.readline()
    if not status_line:
        raise ConnectionResetError("the docker engine closed the connection")
    version, _, rest = status_line.partition(b" ")
    status = rest[:3]
    if not version.startswith(b"HTTP/1.") or not status.isdigit():
        raise ProtocolError(f"not an HTTP answer: {status_line[:80]!r}")
    fields: dict[str, str] = {}
    while (line := await connection.reader.readline()) not in (b"\r\n", b"\n"):
        if not line:
            raise ProtocolError("the docker engine closed the connection in an answer's head")
        name, _, value = line.decode("latin-1").partition(":")
        fields[name.strip().lower()] = value.strip()
    return Head(int(status), fields)


async def _chunk_size(reader: asyncio.StreamReader) -> int:
    line = await reader.readline()
    if not line:
        raise ProtocolError("the docker engine closed the connection in a chunked answer")
    try:
        return int(line.split(b";")[0].strip(), 16)
    except ValueError:
        raise ProtocolError(f"a chunk size of {line[:40]!r}") from None


async def _chunk_end(reader: asyncio.StreamReader) -> None:
    if await reader.readexactly(2) != b"\r\n":
        raise ProtocolError("a chunk's end is not where its size said")


async def read_body(connection: Connection, head: Head, method: str) -> bytes:
    """The whole body; when it ends with the connection, the head is marked so it is not kept."""
    reader = connection.reader
    if head.status in (204, 304) or 100 <= head.status < 200 or method == "HEAD":
        return b""
    if head.chunked:
        parts = []
        while size := await _chunk_size(reader):
            parts.append(await reader.readexactly(size))
            await _chunk_end(reader)
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):  # trailers
            pass
        return b"".join(parts)
    length = head.length
    if length is not None:
        return await reader.readexactly(length)
    head.headers["connection"] = "close"
    return await reader.read()


def decode(head: Head, data: bytes) -> Any:
    """The body as the engine meant it: JSON when it says so, else text; None when empty."""
    if not data:
        return None
    if not head.json:
        return data.decode(errors="replace")
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ProtocolError(f"the docker engine's JSON does not parse: {exc}") from exc


class EngineStream:
    """A response body read as it comes (events, logs, pull progress), on a connection of its own."""

    def __init__(self, connection: Connection, head: Head) -> None:
        self._connection = connection
        self._chunked = head.chunked
        self._left = 0 if head.chunked else head.length  # in the current chunk, or in a sized body
        self._ended = False

    async def read(self) -> bytes:
        """The next piece of the body; b"" at its end. ProtocolError when the engine cuts it short."""
        if self._ended:
            return b""
        reader = self._connection.reader
        if self._chunked and self._left == 0:
            self._left = await _chunk_size(reader)
            if self._left == 0:
                self._ended = True
                return b""
        want = _READ_SIZE if self._left is None else min(self._left, _READ_SIZE)
        data = await reader.read(want) if want else b""
        if self._left is None:  # the body ends with the connection
            self._ended = not data
            return data
        if not data and self._left:
            raise ProtocolError("the docker engine closed the stream")
        self._left -= len(data)
        if self._chunked and self._left == 0:
            await _chunk_end(reader)
        elif not self._chunked and self._left == 0:
            self._ended = True
        return data

    async def lines(self, limit: int = 1024 * 1024) -> Any:
        """The body as newline-separated JSON documents (events, pull progress), each decoded."""
        pending = b""
        while data := await self.read():
            pending += data
            *complete, pending = pending.split(b"\n")
            if len(pending) > limit:
                raise ProtocolError("the docker engine sent an over-long line")
            for line in complete:
                if line.strip():
                    yield _json_line(line)
        if pending.strip():
            yield _json_line(pending)

    def close(self) -> None:
        self._ended = True
        self._connection.close()


def _json_line(line: bytes) -> Any:
    try:
        return json.loads(line)
    except ValueError as exc:
        raise ProtocolError(f"the docker engine's JSON does not parse: {exc}") from exc
