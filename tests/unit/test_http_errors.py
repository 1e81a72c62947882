"""The errors every route of every dialect answers when something breaks: the dialect's JSON error shape
with the request id to look up in the logs, never a traceback or the exception's text; a database that
gave up on a transaction is a 503 to retry. Served over a real socket by the coordinator's own middleware."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

from coordinator.api.app import errors_as_json
from coordinator.domain.failures import StoreBusy


@contextlib.asynccontextmanager
async def serving(handler: Callable[[web.Request], Awaitable[web.Response]]) -> AsyncIterator[str]:
    """``handler`` at /api/broken behind the middleware, on a real port: its URL."""
    app = web.Application(middlewares=[errors_as_json])
    app.router.add_route("*", "/api/broken", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/api/broken"
    finally:
        await runner.cleanup()


async def test_an_unexpected_error_is_a_json_500_naming_the_request() -> None:
    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("password=hunter2 in a stack frame")

    async with serving(broken) as url, aiohttp.ClientSession() as http:
        async with http.get(url, headers={"x-request-id": "r-42"}) as r:
            assert r.status == 500 and r.content_type == "application/json"
            assert await r.json() == {"error": "internal error (request r-42)"}
            assert r.headers["x-request-id"] == "r-42"
        async with http.get(url) as r:
            body = await r.text()
            assert r.status == 500 and "hunter2" not in body and "Traceback" not in body
            assert r.headers["x-request-id"] in body


async def test_a_transaction_the_database_gave_up_on_is_a_503_to_retry() -> None:
    async def busy(request: web.Request) -> web.Response:
        raise StoreBusy("the database is busy (40P01); try again")

    async with serving(busy) as url, aiohttp.ClientSession() as http, http.post(url) as r:
        assert r.status == 503 and r.headers["Retry-After"] == "1"
        assert (await r.json())["error"] == "the database is busy (40P01); try again"
