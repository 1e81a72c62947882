"""Server-Sent Events responses: the headers a proxy must not buffer, and how to tell the client left."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web


def wants_stream(request: web.Request) -> bool:
    return "text/event-stream" in request.headers.get("Accept", "")


async def open_stream(
    request: web.Request, retry_ms: int = 2000
) -> tuple[web.StreamResponse, Callable[[], bool]]:
    """The prepared response, and whether its client has gone (checked between writes, so a stream with
    nothing to say still ends when its tab closes)."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    await response.write(f"retry: {retry_ms}\n\n".encode())
    transport = request.transport

    def gone() -> bool:
        return transport is None or transport.is_closing()

    return response, gone
