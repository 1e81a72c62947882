"""GET /api/events: what changed in the fleet. A client asking for ``text/event-stream`` (an EventSource)
gets Server-Sent Events that follow the fleet until it leaves, resuming after its Last-Event-ID; any other
gets one JSON page to poll with ``?after=``. Either way a caller sees only what it may: an admin
everything, anyone else its organization's instances and the nodes it may place on."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from coordinator.api.fields import Int
from coordinator.api.routing import Call, Router
from coordinator.api.sse import open_stream, wants_stream
from coordinator.domain.records import FleetEvent
from coordinator.service.errors import BadRequest
from coordinator.service.events import document

router = Router("events")

#: Event ids are 64-bit (a busy fleet writes billions over the years).
MAX_EVENT_ID = 2**63 - 1


class EventsQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    after: Int | None = Field(
        None,
        ge=0,
        le=MAX_EVENT_ID,
        description="Events after this id (a stream: else after Last-Event-ID, else from now).",
    )
    limit: Int = Field(100, ge=1, le=1000, description="At most this many events in a JSON page.")
    last: bool = Field(
        False, description="The page holds the newest `limit` events (after `after`) rather than the oldest."
    )


class EventOut(BaseModel):
    id: int = Field(description="Grows with every event; the stream's event id.")
    at: str | None
    kind: str = Field(
        description="instance.state (data: old, new, event, error), instance.placed (regionId, memoryMib,"
        " cpuPercent), instance.crashed (error, exitCode, oomKilled, state), placement.refused (reason,"
        " field, regionId, memoryMib, cpuPercent, unreachable) or node.status (old, new)."
    )
    instanceId: str | None
    nodeId: str | None
    organizationId: int | None
    data: dict[str, Any]

    @classmethod
    def of(cls, e: FleetEvent) -> EventOut:
        return cls(**document(e))


def _resume_from(call: Call, query: EventsQuery) -> int | None:
    if query.after is not None:
        return query.after
    given = call.request.headers.get("Last-Event-ID", "").strip()
    if not given:
        return None
    if not given.isdigit() or int(given) > MAX_EVENT_ID:
        raise BadRequest("Last-Event-ID: not an event id", field="Last-Event-ID")
    return int(given)


@router.route("GET", "/api/events", query=EventsQuery, response=list[EventOut])
async def fleet_events(call: Call, query: EventsQuery) -> list[EventOut] | web.StreamResponse:
    """Instance state changes and node status changes, oldest first."""
    events = call.services.events
    after = _resume_from(call, query)
    if not wants_stream(call.request):
        found = await events.after(call.caller, after or 0, query.limit, newest=query.last)
        return [EventOut.of(e) for e in found]
    start = after if after is not None else await events.newest_id()
    response, gone = await open_stream(call.request)
    try:
        told = start
        async for batch in events.follow(call.caller, start, gone):
            if not batch:
                await response.write(b": keepalive\n\n")
                continue
            # A late event (lower id, committed after higher ones) goes without an id: Last-Event-ID stays
            # the highest told, so a resumed client gets nothing twice.
            await response.write(b"".join(_sse(e, with_id=e.id > told) for e in batch))
            told = max(told, batch[-1].id, *(e.id for e in batch))
    except (ConnectionResetError, ConnectionError):
        pass  # the client left
    return response


def _sse(e: FleetEvent, with_id: bool = True) -> bytes:
    data = json.dumps(document(e), separators=(",", ":"))
    head = f"id: {e.id}\n" if with_id else ""
    return f"{head}event: {e.kind}\ndata: {data}\n\n".encode()
