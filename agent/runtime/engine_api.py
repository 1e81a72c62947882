"""A small asyncio client for the Docker Engine API: HTTP/1.1 on the engine's unix socket (or TCP).

The agent makes a dozen kinds of call. Through docker-py they ran on a thread pool, through requests and
urllib3: ~7 MiB of imports in an agent that lives beside customers' containers for months, eight worker
threads, a thread per event or log stream, and ~0.7 ms of CPU an inspect (a heartbeat inspects every
container). Here every call is a coroutine on the agent's loop, a stream is read only as fast as its
consumer asks (the socket is the buffer), and a few idle connections are kept for the next call.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from agent.runtime.base import RuntimeFailure

DEFAULT_URL = "unix:///var/run/docker.sock"
#: The newest engine API this client was written against; an older engine's own version is used.
NEWEST_API = (1, 47)
#: Connections kept open between calls; more run at once when calls overlap, and are closed after.
IDLE_CONNECTIONS = 4
#: Calls in flight at once (streams and calls that wait on a container, like stop, aside): a hundred
#: instances adopted or started together queue here instead of opening a hundred connections at once.
IN_FLIGHT = 8
_LINE_LIMIT = 64 * 1024
_READ_SIZE = 64 * 1024


class EngineError(RuntimeFailure):
    """The engine answered with an error status; ``str(exc)`` is its own message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _message(status: int, body: bytes) -> str:
    try:
        return str(json.loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace").strip() or f"the docker engine answered {status}"


def path(template: str, *args: str) -> str:
    """A request path with its arguments escaped (an image name keeps its slashes and colons)."""
    return template.format(*(quote(a, safe="/:@") for a in args))


def _tls_context() -> ssl.SSLContext:
    """The docker CLI's environment: DOCKER_CERT_PATH (default ~/.docker) holds ca.pem, cert.pem, key.pem."""
    certs = Path(os.environ.get("DOCKER_CERT_PATH") or Path.home() / ".docker")
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    context.load_cert_chain(str(certs / "cert.pem"), str(certs / "key.pem"))
    return context


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def usable(self) -> bool:
        """False once the engine closed it (the loop has seen the EOF) or it broke."""
        return not self.reader.at_eof() and self.reader.exception() is None and not self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


class _Head:
    """A response's status and headers; its body is read from the connection afterwards."""

    __slots__ = ("headers", "status")

    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status, self.headers = status, headers

    @property
    def chunked(self) -> bool:
        return "chunked" in self.headers.get("transfer-encoding", "").lower()

    @property
    def keeps_alive(self) -> bool:
        return self.headers.get("connection", "").lower() != "close"


class EngineStream:
    """A response body read as it comes (events, logs, pull progress), on a connection of its own."""

    def __init__(self, connection: _Connection, head: _Head) -> None:
        self._connection = connection
        self._chunked = head.chunked
        self._left = 0  # bytes left in the current chunk
        self._ended = False
        self.content_type = head.headers.get("content-type", "")

    async def read(self) -> bytes:
        """The next piece of the body; b"" at its end."""
        if self._ended:
            return b""
        reader = self._connection.reader
        if not self._chunked:
            data = await reader.read(_READ_SIZE)
        else:
            if self._left == 0:
                size_line = await reader.readline()
                if not size_line:
                    raise RuntimeFailure("the docker engine closed the stream")
                self._left = int(size_line.split(b";")[0].strip() or b"0", 16)
                if self._left == 0:
                    self._ended = True
                    return b""
            data = await reader.read(min(self._left, _READ_SIZE))
            if not data:
                raise RuntimeFailure("the docker engine closed the stream")
            self._left -= len(data)
            if self._left == 0:
                await reader.readexactly(2)  # the chunk's CRLF
        if not data:
            self._ended = True
        return data

    async def lines(self, limit: int = 1024 * 1024) -> Any:
        """The body as newline-separated JSON documents (events, pull progress), each decoded."""
        pending = b""
        while data := await self.read():
            pending += data
            *complete, pending = pending.split(b"\n")
            if len(pending) > limit:
                raise RuntimeFailure("the docker engine sent an over-long line")
            for line in complete:
                if line.strip():
                    yield json.loads(line)
        if pending.strip():
            yield json.loads(pending)

    def close(self) -> None:
        self._ended = True
        self._connection.close()


class EngineClient:
    """One engine endpoint: ``unix:///path``, ``tcp://host:port`` (TLS when DOCKER_TLS_VERIFY is set, as the
    docker CLI does), ``http://`` or ``https://``. Without a URL, DOCKER_HOST, then the default socket."""

    def __init__(self, url: str | None = None, *, timeout_s: float = 60.0) -> None:
        self.url = url or os.environ.get("DOCKER_HOST") or DEFAULT_URL
        parts = urlsplit(self.url)
        self._unix_path: str | None = None
        self._tls: ssl.SSLContext | None = None
        if parts.scheme in ("unix", "http+unix"):
            self._unix_path = parts.path
        elif parts.scheme in ("tcp", "http", "https") and parts.hostname:
            self._host, self._port = parts.hostname, parts.port or (2376 if parts.scheme == "https" else 2375)
            if parts.scheme == "https" or (parts.scheme == "tcp" and os.environ.get("DOCKER_TLS_VERIFY")):
                self._tls = _tls_context()
        else:
            raise ValueError(f"not a docker engine address: {self.url!r} (unix://, tcp://, http(s)://)")
        self.timeout_s = timeout_s
        self._idle: list[_Connection] = []
        self._in_flight = asyncio.Semaphore(IN_FLIGHT)
        self._prefix = ""  # "/v1.xx" once the engine said its version
        self._closed = False

    # -- connections ----------------------------------------------------------------------------------

    async def _open(self) -> _Connection:
        try:
            if self._unix_path is not None:
                reader, writer = await asyncio.open_unix_connection(self._unix_path, limit=_LINE_LIMIT)
            else:
                reader, writer = await asyncio.open_connection(
                    self._host, self._port, ssl=self._tls, limit=_LINE_LIMIT
                )
        except OSError as exc:
            self._engine_went_away()
            raise RuntimeFailure(f"cannot reach the docker engine at {self.url}: {exc}") from exc
        return _Connection(reader, writer)

    def _reuse(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if connection.usable():
                return connection
            connection.close()
            self._engine_went_away()
        return None

    def _engine_went_away(self) -> None:
        """The engine may come back upgraded (a newer engine can refuse the API version it spoke before):
        ask it again."""
        self._prefix = ""

    def _release(self, connection: _Connection) -> None:
        if self._closed or len(self._idle) >= IDLE_CONNECTIONS or not connection.usable():
            connection.close()
        else:
            self._idle.append(connection)

    def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()

    # -- one exchange ---------------------------------------------------------------------------------

    async def _version_prefix(self) -> str:
        if not self._prefix:
            version = await self.call("GET", "/version", versioned=False)
            major, minor = (int(p) for p in str(version.get("ApiVersion", "1.41")).split(".")[:2])
            major, minor = min((major, minor), NEWEST_API)
            self._prefix = f"/v{major}.{minor}"
        return self._prefix

    async def _target(self, path: str, params: Mapping[str, Any] | None, versioned: bool) -> str:
        query = ""
        if params:
            pairs = {k: _param(v) for k, v in params.items() if v is not None}
            query = "?" + urlencode(pairs)
        return (await self._version_prefix() if versioned else "") + path + query

    @staticmethod
    async def _send(connection: _Connection, method: str, target: str, body: bytes | None) -> _Head:
        head = f"{method} {target} HTTP/1.1\r\nHost: docker\r\nUser-Agent: moorage-agent\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        elif method in ("POST", "PUT"):
            head += "Content-Length: 0\r\n"
        connection.writer.write(head.encode("latin-1") + b"\r\n" + (body or b""))
        await connection.writer.drain()
        status_line = await connection.reader.readline()
        if not status_line:
            raise ConnectionResetError("the docker engine closed the connection")
        status = int(status_line.split(b" ", 2)[1])
        headers: dict[str, str] = {}
        while (line := await connection.reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return _Head(status, headers)

    async def _exchange(
        self, method: str, target: str, body: bytes | None, stream: bool
    ) -> tuple[_Connection, _Head]:
        """Send and read the head; a kept connection the engine dropped meanwhile is replaced once."""
        if self._closed:
            raise RuntimeFailure("the docker runtime is closed")
        reused = None if stream else self._reuse()
        connection = reused or await self._open()
        try:
            return connection, await self._send(connection, method, target, body)
        except (ConnectionError, asyncio.IncompleteReadError):
            connection.close()
            self._engine_went_away()
            if reused is None:
                raise
        except BaseException:
            connection.close()
            raise
        connection = await self._open()
        try:
            return connection, await self._send(connection, method, target, body)
        except BaseException:
            connection.close()
            raise

    @staticmethod
    async def _body(connection: _Connection, head: _Head, method: str) -> bytes:
        reader = connection.reader
        if head.status in (204, 304) or method == "HEAD":
            return b""
        if head.chunked:
            parts = []
            while size := int((await reader.readline()).split(b";")[0].strip() or b"0", 16):
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(parts)
        if "content-length" in head.headers:
            return await reader.readexactly(int(head.headers["content-length"]))
        head.headers["connection"] = "close"  # the body ends with the connection
        return await reader.read()

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        timeout_s: float | None = None,
        versioned: bool = True,
        waits: bool = False,
    ) -> Any:
        """``waits``: the call waits on a container (a stop), so it takes no place among the calls in
        flight: others are not held up behind it."""
        if waits:
            return await self._call(method, path, params, body, timeout_s, versioned)
        async with self._in_flight:
            return await self._call(method, path, params, body, timeout_s, versioned)

    async def _call(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        body: Any,
        timeout_s: float | None,
        versioned: bool,
    ) -> Any:
        payload = None if body is None else json.dumps(body).encode()
        try:
            async with asyncio.timeout(timeout_s or self.timeout_s):
                target = await self._target(path, params, versioned)
                connection, head = await self._exchange(method, target, payload, stream=False)
                try:
                    data = await self._body(connection, head, method)
                except BaseException:
                    connection.close()
                    raise
        except TimeoutError as exc:
            raise RuntimeFailure(
                f"the docker engine did not answer {method} {path} within {timeout_s or self.timeout_s:g} s"
            ) from exc
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            raise RuntimeFailure(f"talking to the docker engine at {self.url} failed: {exc}") from exc
        if head.keeps_alive:
            self._release(connection)
        else:
            connection.close()
        if head.status >= 400:
            raise EngineError(head.status, _message(head.status, data))
        if not data or "json" not in head.headers.get("content-type", ""):
            return data.decode(errors="replace") if data else None
        return json.loads(data)

    async def stream(self, method: str, path: str, params: Mapping[str, Any] | None = None) -> EngineStream:
        """Open a streaming response on a new connection; the caller closes it."""
        try:
            async with asyncio.timeout(self.timeout_s):
                target = await self._target(path, params, versioned=True)
                connection, head = await self._exchange(method, target, None, stream=True)
                if head.status >= 400:
                    try:
                        data = await self._body(connection, head, method)
                    finally:
                        connection.close()
                    raise EngineError(head.status, _message(head.status, data))
        except TimeoutError as exc:
            raise RuntimeFailure(f"the docker engine did not answer {method} {path}") from exc
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            raise RuntimeFailure(f"talking to the docker engine at {self.url} failed: {exc}") from exc
        return EngineStream(connection, head)


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)
