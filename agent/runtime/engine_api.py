"""A small asyncio client for the Docker Engine API: HTTP/1.1 on the engine's unix socket (or TCP).

The agent makes a dozen kinds of call. Through docker-py they ran on a thread pool, through requests and
urllib3: ~7 MiB of imports in an agent that lives beside customers' containers for months, eight worker
threads, a thread per event or log stream, and ~0.7 ms of CPU an inspect (a heartbeat inspects every
container). Here every call is a coroutine on the agent's loop, a stream is read only as fast as its
consumer asks (the socket is the buffer), and a few idle connections are kept for the next call. The wire
itself is agent/runtime/engine_http.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from agent.runtime.base import RuntimeFailure
from agent.runtime.engine_http import (
    LINE_LIMIT,
    Connection,
    EngineStream,
    Head,
    ProtocolError,
    decode,
    read_body,
    send,
)

DEFAULT_URL = "unix:///var/run/docker.sock"
#: The newest engine API this client was written against; an older engine's own version is used.
NEWEST_API = (1, 47)
#: Connections kept open between calls; more run at once when calls overlap, and are closed after.
IDLE_CONNECTIONS = 4
#: Calls in flight at once (streams and calls that wait on a container, like stop, aside): a hundred
#: instances adopted or started together queue here instead of opening a hundred connections at once.
IN_FLIGHT = 8
_FAILURES = (OSError, asyncio.IncompleteReadError, ProtocolError)


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


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _query(params: Mapping[str, Any] | None) -> str:
    pairs = {k: _param(v) for k, v in (params or {}).items() if v is not None}
    return "?" + urlencode(pairs) if pairs else ""


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
            if parts.scheme == "https" or (parts.scheme == "tcp" and os.environ.get("DOCKER_TLS_VERIFY")):
                self._tls = _tls_context()
            self._host, self._port = parts.hostname, parts.port or (2376 if self._tls else 2375)
        else:
            raise ValueError(f"not a docker engine address: {self.url!r} (unix://, tcp://, http(s)://)")
        self.timeout_s = timeout_s
        self._idle: list[Connection] = []
        self._in_flight = asyncio.Semaphore(IN_FLIGHT)
        self._asking_version = asyncio.Lock()
        self._prefix = ""  # "/v1.xx" once the engine said its version
        self._closed = False

    # -- connections ----------------------------------------------------------------------------------

    async def _open(self) -> Connection:
        try:
            if self._unix_path is not None:
                reader, writer = await asyncio.open_unix_connection(self._unix_path, limit=LINE_LIMIT)
            else:
                reader, writer = await asyncio.open_connection(
                    self._host, self._port, ssl=self._tls, limit=LINE_LIMIT
                )
        except OSError as exc:
            # The engine is away; it may come back upgraded, and a newer engine can refuse the API
            # version the older one spoke: ask again once it is back.
            self._prefix = ""
            raise RuntimeFailure(f"cannot reach the docker engine at {self.url}: {exc}") from exc
        return Connection(reader, writer)

    def _reuse(self) -> Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if connection.usable():
                return connection
            connection.close()
        return None

    def _release(self, connection: Connection, head: Head) -> None:
        if (
            self._closed
            or not head.keeps_alive
            or len(self._idle) >= IDLE_CONNECTIONS
            or not connection.usable()
        ):
            connection.close()
        else:
            self._idle.append(connection)

    def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()

    async def _exchange(
        self, method: str, target: str, body: bytes | None, headers: dict[str, str] | None, fresh: bool
    ) -> tuple[Connection, Head]:
        """Send and read the head. A kept connection the engine had dropped (it answered nothing at all)
        is replaced by a new one, once."""
        if self._closed:
            raise RuntimeFailure("the docker runtime is closed")
        reused = None if fresh else self._reuse()
        connection = reused or await self._open()
        try:
            return connection, await send(connection, method, target, body, headers)
        except (ConnectionError, asyncio.IncompleteReadError):
            connection.close()
            if reused is None:
                raise
        except BaseException:
            connection.close()
            raise
        connection = await self._open()
        try:
            return connection, await send(connection, method, target, body, headers)
        except BaseException:
            connection.close()
            raise

    # -- calls ----------------------------------------------------------------------------------------

    async def _version_prefix(self) -> str:
        """Asked once (again after the engine was away), outside the calls in flight: calls waiting for
        a place must not hold the one that would tell them the version."""
        async with self._asking_version:
            if not self._prefix:
                version = await self._request("GET", "/version", None, None, self.timeout_s)
                try:
                    major, minor = (int(p) for p in str(version["ApiVersion"]).split(".")[:2])
                except (KeyError, TypeError, ValueError) as exc:
                    raise RuntimeFailure(
                        f"the docker engine did not say its API version: {version!r}"
                    ) from exc
                major, minor = min((major, minor), NEWEST_API)
                self._prefix = f"/v{major}.{minor}"
            return self._prefix

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
        """One call, its answer decoded. ``waits``: the call waits on a container (a stop), so it takes no
        place among the calls in flight: others are not held up behind it."""
        target = (await self._version_prefix() if versioned else "") + path + _query(params)
        payload = None if body is None else json.dumps(body).encode()
        try:
            if waits:
                return await self._request(method, target, payload, None, timeout_s or self.timeout_s)
            async with self._in_flight:
                return await self._request(method, target, payload, None, timeout_s or self.timeout_s)
        except EngineError as exc:
            if exc.status == 400 and "client version" in str(exc).lower():
                self._prefix = ""  # the engine changed under us: the next call asks again
            raise

    async def _request(
        self, method: str, target: str, body: bytes | None, headers: dict[str, str] | None, timeout_s: float
    ) -> Any:
        async with self._answering(method, _path_of(target), timeout_s):
            connection, head = await self._exchange(method, target, body, headers, fresh=False)
            try:
                data = await read_body(connection, head, method)
            except BaseException:
                connection.close()
                raise
            self._release(connection, head)
            if head.status >= 400:
                raise EngineError(head.status, _message(head.status, data))
            return decode(head, data)

    @contextlib.asynccontextmanager
    async def _answering(self, method: str, path: str, limit: float | None) -> AsyncIterator[None]:
        """The time an exchange may take, and its failures in the runtime's words."""
        try:
            async with asyncio.timeout(limit):
                yield
        except TimeoutError as exc:
            raise RuntimeFailure(
                f"the docker engine did not answer {method} {path} within {limit:g} s"
            ) from exc
        except _FAILURES as exc:
            raise RuntimeFailure(f"talking to the docker engine at {self.url} failed: {exc}") from exc

    async def stream(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        headers: dict[str, str] | None = None,
        head_timeout_s: float | None = -1,
    ) -> EngineStream:
        """Open a streaming response on a new connection; the caller closes it. ``head_timeout_s``: how long
        the answer's head may take (default the client's timeout; None: no limit, for a pull that waits on
        a registry before its first line)."""
        limit = self.timeout_s if head_timeout_s == -1 else head_timeout_s
        target = await self._version_prefix() + path + _query(params)
        async with self._answering(method, path, limit):
            connection, head = await self._exchange(method, target, None, headers, fresh=True)
            if head.status >= 400:
                try:
                    data = await read_body(connection, head, method)
                finally:
                    connection.close()
                raise EngineError(head.status, _message(head.status, data))
        return EngineStream(connection, head)


def _path_of(target: str) -> str:
    """The call as the code names it: without the version prefix and the query."""
    bare = target.split("?", 1)[0]
    if bare.startswith("/v") and "/" in bare[1:]:
        version, rest = bare[2:].split("/", 1)
        if version.replace(".", "").isdigit():
            return "/" + rest
    return bare
