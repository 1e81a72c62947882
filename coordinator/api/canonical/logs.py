"""GET /api/instances/{id}/logs: the last lines of an instance's container output, read through its node's
agent session; with ``follow=true`` and ``Accept: text/event-stream``, Server-Sent Events of what it
writes next until the client leaves. Another organization's instance is missing, as elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import json

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from coordinator.api.fields import Int
from coordinator.api.routing import Call, Router
from coordinator.api.sse import open_stream, wants_stream
from coordinator.service.errors import Unavailable
from coordinator.service.logs import IDLE_S, MAX_TAIL, LogEnded

router = Router("logs")

#: A JSON answer holds at most this much output (tail lines can be long).
MAX_BYTES = 4 * 1024 * 1024
#: Seconds without output before the stream says it is still there.
KEEPALIVE_S = 15.0
#: A JSON answer waits at most this long for the output's end (a relayed end lost on the way, say).
READ_S = 30.0


class LogsQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    tail: Int = Field(100, ge=0, le=MAX_TAIL, description=f"The last this many lines (at most {MAX_TAIL}).")
    follow: bool = Field(
        False, description="With Accept: text/event-stream, go on with what the container writes next."
    )


class LogsOut(BaseModel):
    instanceId: str
    lines: list[str]
    truncated: bool = Field(description=f"Cut at {MAX_BYTES} bytes.")
    error: str | None = Field(description="Why the output ended early (the container went, say).")


def _lines(data: bytes) -> list[str]:
    return data.decode(errors="replace").splitlines()


@router.route(
    "GET",
    "/api/instances/{id}/logs",
    query=LogsQuery,
    response=LogsOut,
    errors={
        404: "No such instance",
        409: "The instance is on no node yet",
        429: "The node already streams as many logs as it may",
        503: "The node's agent is not connected here",
    },
)
async def instance_logs(call: Call, query: LogsQuery) -> LogsOut | web.StreamResponse:
    """The container's output: stdout and stderr, interleaved as written."""
    iid = call.path("id")
    logs = call.services.logs
    if query.follow and wants_stream(call.request):
        return await _follow(call, iid, query.tail)
    held, size, truncated, error = [], 0, False, None
    try:
        async with (
            asyncio.timeout(READ_S),
            contextlib.aclosing(logs.read(call.caller, iid, query.tail, follow=False)) as output,
        ):
            async for data in output:
                if data is None:
                    continue
                if size + len(data) > MAX_BYTES:
                    truncated = True
                    break
                held.append(data)
                size += len(data)
    except LogEnded as exc:
        error = str(exc)
    except TimeoutError:
        error = f"the output did not end within {READ_S:g} s"
    return LogsOut(instanceId=iid, lines=_lines(b"".join(held)), truncated=truncated, error=error)


async def _follow(call: Call, iid: str, tail: int) -> web.StreamResponse:
    stream = call.services.logs.read(call.caller, iid, tail, follow=True)
    quiet = 0.0
    try:
        try:
            first = await anext(stream, b"")  # refusals (404, 409, 429, 503) answer before the stream opens
        except LogEnded as exc:  # ended before anything came (its session went meanwhile)
            raise Unavailable(str(exc)) from exc
        response, gone = await open_stream(call.request)
        data = first
        while True:
            if gone():
                break
            if data:
                body = json.dumps({"lines": _lines(data)}, separators=(",", ":"))
                await response.write(f"event: log\ndata: {body}\n\n".encode())
                quiet = 0.0
            else:
                quiet += IDLE_S  # the service's idle tick
                if quiet >= KEEPALIVE_S:
                    await response.write(b": keepalive\n\n")
                    quiet = 0.0
            try:
                data = await anext(stream)
            except StopAsyncIteration:
                await response.write(b"event: end\ndata: {}\n\n")
                break
    except LogEnded as exc:
        with contextlib.suppress(ConnectionError):
            await response.write(f"event: end\ndata: {json.dumps({'error': str(exc)})}\n\n".encode())
    except (ConnectionResetError, ConnectionError):
        pass  # the client left
    finally:
        await stream.aclose()  # tells the agent to stop
    return response
