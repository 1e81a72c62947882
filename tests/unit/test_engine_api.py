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
        self.heads: list[bytes] = []
        self.connections = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while line := await reader.readline():
                length = 0
                head = line
                while (header := await reader.readline()) not in (b"\r\n", b""):
                    head += header
                    if header.lower().startswith(b"content-length:"):
                        length = int(header.split(b":")[1])
                self.heads.append(head)
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
            b'5\r\n{"Id"\r\n5;ext=1\r\n:"b"}\r\n0\r\nX-Trailer: 1\r\n\r\n',
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
    """The engine closed a kept connection between two calls (a proxy's idle timeout): the second call
    still works, on a new connection."""

    async def drop(writer: asyncio.StreamWriter) -> None:
        """Read the request, answer nothing, close."""

    engine = Engine([_json(200, {"n": 1}), drop, _json(200, {"n": 2})])
    client = EngineClient(f"unix://{await socket_path(engine)}")
    assert await client.call("GET", "/a") == {"n": 1}
    assert await client.call("GET", "/b") == {"n": 2}
    assert engine.connections == 2
    assert engine.requests == ["/version", "/v1.47/a", "/v1.47/b", "/v1.47/b"]
    client.close()


async def test_the_version_is_asked_again_after_the_engine_was_away(
    socket_path: Callable[[Engine], Awaitable[str]], tmp_path: Path
) -> None:
    """An engine that comes back (perhaps upgraded) is asked its version again, once, by the calls queued
    meanwhile: none of them may hold a place among the calls in flight while it waits for the version, or
    the calls holding every place wait on each other."""

    async def slow(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.3)
        writer.write(_json(200, {"n": 1}))
        await writer.drain()

    engine = Engine([*[slow] * 8, *[_json(200, {"n": 2})] * 30])
    path = await socket_path(engine)
    client = EngineClient(f"unix://{path}", timeout_s=5)
    in_flight = [asyncio.create_task(client.call("GET", f"/slow{n}")) for n in range(8)]
    await asyncio.sleep(0.1)  # every place taken
    away = tmp_path / "away.sock"
    await asyncio.to_thread(Path(path).rename, away)  # the engine's socket is gone...
    with pytest.raises(RuntimeFailure, match="cannot reach the docker engine"):
        await client.call("GET", "/b", waits=True)
    await asyncio.to_thread(away.rename, path)  # ...and back
    async with asyncio.timeout(4):
        queued = await asyncio.gather(*(client.call("GET", f"/c{n}") for n in range(30)))
        assert await asyncio.gather(*in_flight) == [{"n": 1}] * 8
    assert queued == [{"n": 2}] * 30
    assert engine.requests.count("/version") == 2
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


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\n', "chunked answer"),
        (b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{"a":\r\n', "chunk's end"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 3\r\n\r\n{x}",
            "does not parse",
        ),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP answer"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "talking to the docker engine"),
    ],
)
async def test_a_broken_answer_is_a_runtime_failure(
    socket_path: Callable[[Engine], Awaitable[str]], answer: bytes, words: str
) -> None:
    """Cut short, garbled or not HTTP at all: the caller gets RuntimeFailure, and the connection is not
    kept for the next call."""

    async def then_close(writer: asyncio.StreamWriter) -> None:
        writer.write(answer)
        await writer.drain()

    engine = Engine([then_close, _json(200, {"ok": True})])
    client = EngineClient(f"unix://{await socket_path(engine)}")
    with pytest.raises(RuntimeFailure, match=words):
        await client.call("GET", "/a")
    assert await client.call("GET", "/b") == {"ok": True}
    client.close()


async def test_a_sized_stream_ends_at_its_length(socket_path: Callable[[Engine], Awaitable[str]]) -> None:
    engine = Engine([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"])
    client = EngineClient(f"unix://{await socket_path(engine)}")
    stream = await client.stream("GET", "/containers/x/logs")
    assert await stream.read() == b"hello"
    assert await asyncio.wait_for(stream.read(), 2) == b""
    stream.close()
    client.close()


async def test_headers_go_with_the_request(socket_path: Callable[[Engine], Awaitable[str]]) -> None:
    seen: list[bytes] = []

    async def record(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        await writer.drain()

    engine = Engine([record])
    engine.heads = seen
    client = EngineClient(f"unix://{await socket_path(engine)}")
    stream = await client.stream(
        "POST", "/images/create", {"fromImage": "a"}, headers={"X-Registry-Auth": "abc"}
    )
    assert await stream.read() == b""
    stream.close()
    assert b"x-registry-auth: abc" in seen[-1].lower()
    client.close()
