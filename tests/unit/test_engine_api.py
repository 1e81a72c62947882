"""The engine client's HTTP/1.1 against a unix-socket server that answers with fixed bytes: the framings an
engine (or a proxy in front of one) may use, and connections the other side dropped. The client against
the real engine is tests/integration/test_docker_runtime.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from agent.runtime.base import RuntimeFailure
from agent.runtime.engine_api import EngineClient, EngineError


def _json(status: int, body: object, extra: str = "") -> bytes:
    data = json.dumps(body).encode()
    head = (
        f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n{extra}\r\n"
    )
    return head.encode() + data


class Engine:
    """Answers each request with the next of ``answers`` (/version aside): bytes, or a coroutine function
    after which the connection is closed. Records each request's target."""

    def __init__(self, answers: list[bytes | Callable[[asyncio.StreamWriter], Awaitable[None]]]) -> None:
        self.answers = answers
        self.requests: list[str] = []
        self.connections = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while line := await reader.readline():
                length = 0
                while (header := await reader.readline()) not in (b"\r\n", b""):
                    if header.lower().startswith(b"content-length:"):
                        length = int(header.split(b":")[1])
                await reader.readexactly(length)
                self.requests.append(line.decode().split()[1])
                if line.split()[1].endswith(b"/version"):
                    writer.write(_json(200, {"ApiVersion": "1.52"}))
                    continue
                answer = self.answers.pop(0)
                if callable(answer):
                    await answer(writer)
                    return
                writer.write(answer)
                await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def socket_path(tmp_path: Path) -> AsyncIterator[Callable[[Engine], Awaitable[str]]]:
    servers: list[asyncio.Server] = []
    path = str(tmp_path / "engine.sock")

    async def start(engine: Engine) -> str:
        servers.append(await asyncio.start_unix_server(engine.serve, path))
        return path

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_versioned_paths_framings_and_one_kept_connection(
    socket_path: Callable[[Engine], Awaitable[str]],
) -> None:
    engine = Engine(
        [
            _json(200, [{"Id": "a"}]),
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'5\r\n{"Id"\r\n6\r\n:"b"}\r\n0\r\nX-Trailer: 1\r\n\r\n',
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ]
    )
    client = EngineClient(f"unix://{await socket_path(engine)}")
    assert await client.call("GET", "/containers/json", params={"all": True, "filters": {"a": ["b"]}}) == [
        {"Id": "a"}
    ]
    assert await client.call("GET", "/containers/b/json") == {"Id": "b"}
    assert await client.call("POST", "/containers/b/start") is None
    # The engine's 1.52 is newer than this client knows: it speaks the newest it was written against.
    assert engine.requests == [
        "/version",
        "/v1.47/containers/json?all=1&filters=%7B%22a%22%3A+%5B%22b%22%5D%7D",
        "/v1.47/containers/b/json",
        "/v1.47/containers/b/start",
    ]
    assert engine.connections == 1
    client.close()


async def test_errors_carry_the_engines_message(socket_path: Callable[[Engine], Awaitable[str]]) -> None:
    engine = Engine(
        [_json(404, {"message": "No such container: x"}), b"HTTP/1.1 500 X\r\nContent-Length: 4\r\n\r\noops"]
    )
    client = EngineClient(f"unix://{await socket_path(engine)}")
    with pytest.raises(EngineError, match="No such container: x") as missing:
        await client.call("GET", "/containers/x/json")
    assert missing.value.status == 404
    with pytest.raises(EngineError, match="oops"):
        await client.call("GET", "/info")
    client.close()


async def test_a_dropped_kept_connection_is_replaced_once(
    socket_path: Callable[[Engine], Awaitable[str]],
) -> None:
    """The engine restarted (or closed an idle connection) between two calls: the second call still works,
    and the one after asks the engine's version again (it may have come back upgraded)."""

    async def drop(writer: asyncio.StreamWriter) -> None:
        """Read the request, answer nothing, close."""

    engine = Engine([_json(200, {"n": 1}), drop, _json(200, {"n": 2}), _json(200, {"n": 3})])
    client = EngineClient(f"unix://{await socket_path(engine)}")
    assert await client.call("GET", "/a") == {"n": 1}
    assert await client.call("GET", "/b") == {"n": 2}
    assert await client.call("GET", "/c") == {"n": 3}
    assert engine.connections == 2
    assert engine.requests == ["/version", "/v1.47/a", "/v1.47/b", "/v1.47/b", "/version", "/v1.47/c"]
    client.close()


async def test_a_body_that_ends_with_the_connection(socket_path: Callable[[Engine], Awaitable[str]]) -> None:
    async def then_close(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n[1, 2]")
        await writer.drain()

    engine = Engine([then_close])
    client = EngineClient(f"unix://{await socket_path(engine)}")
    assert await client.call("GET", "/a") == [1, 2]
    client.close()


async def test_a_silent_engine_times_out_with_the_call_named(
    socket_path: Callable[[Engine], Awaitable[str]],
) -> None:
    async def never(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    engine = Engine([never])
    path = await socket_path(engine)
    client = EngineClient(f"unix://{path}", timeout_s=0.3)
    with pytest.raises(RuntimeFailure, match=r"did not answer GET /slow within 0\.3 s"):
        await client.call("GET", "/slow")
    client.close()


async def test_streams_read_chunk_by_chunk_as_json_lines(
    socket_path: Callable[[Engine], Awaitable[str]],
) -> None:
    engine = Engine(
        [
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'4\r\n{"a"\r\n5\r\n:1}\n{\r\n7\r\n"a":2}\n\r\n0\r\n\r\n'
        ]
    )
    client = EngineClient(f"unix://{await socket_path(engine)}")
    stream = await client.stream("GET", "/events")
    assert [doc async for doc in stream.lines()] == [{"a": 1}, {"a": 2}]
    stream.close()
    client.close()


def test_addresses() -> None:
    with pytest.raises(ValueError, match="not a docker engine address"):
        EngineClient("ssh://host")
    assert EngineClient("tcp://10.0.0.5").url == "tcp://10.0.0.5"
