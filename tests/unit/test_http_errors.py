"""The 500 every route of every dialect answers when something breaks: the dialect's JSON error shape
with the request id to look up in the logs, never a traceback or the exception's text. Served over a real
socket by the coordinator's own middleware."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from coordinator.api.app import errors_as_json


async def test_an_unexpected_error_is_a_json_500_naming_the_request() -> None:
    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("password=hunter2 in a stack frame")

    app = web.Application(middlewares=[errors_as_json])
    app.router.add_get("/api/broken", broken)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/api/broken", headers={"x-request-id": "r-42"}) as r:
                assert r.status == 500 and r.content_type == "application/json"
                assert await r.json() == {"error": "internal error (request r-42)"}
                assert r.headers["x-request-id"] == "r-42"
            async with http.get(f"http://127.0.0.1:{port}/api/broken") as r:
                body = await r.text()
                assert r.status == 500 and "hunter2" not in body and "Traceback" not in body
                assert r.headers["x-request-id"] in body
    finally:
        await runner.cleanup()
