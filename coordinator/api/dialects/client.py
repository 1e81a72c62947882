"""The client dialect (seed 003, FlexMetal's client API): a client's servers, tags and usage under
/api/v1/client/{clientId}/…, plus ordering a server (the document lacks it; no portal works without it).
Thin: validate, call a use case, render."""

from __future__ import annotations

import uuid

from coordinator.api.dialects.client_models import (
    ClientServer,
    Paging,
    ServerListQuery,
    ServerOrder,
    ServerPage,
    Tag,
    TagBody,
    TagDetail,
    TagPage,
    UsagePage,
    UsageQuery,
    UsageRow,
    parse_time,
)
from coordinator.api.fields import MAX_ID
from coordinator.api.routing import FIELD_NAMES, Call, Router
from coordinator.domain.records import Instance
from coordinator.service.errors import BadRequest

#: A client's order names where it goes its location; its servers are serverUuid.
FIELDS = {
    **FIELD_NAMES,
    "region": "location",
    "region_id": "location",
    "node_id": "location",
    "instance_id": "serverUuid",
}
router = Router("client", field_names=FIELDS)
BASE = "/api/v1/client/{clientId}"
FOREIGN = {403: "The client is not the caller's organization"}


def client_id(call: Call) -> int:
    raw = call.path("clientId")
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 10) or not 1 <= int(raw) <= MAX_ID:
        raise BadRequest(f"clientId: {raw[:40]!r} is not a client id (a positive integer)", field="clientId")
    return int(raw)


def server_uuid(call: Call) -> str:
    raw = call.path("serverUuid")
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise BadRequest(f"serverUuid: {raw[:60]!r} is not a UUID", field="serverUuid") from None


async def render(call: Call, inst: Instance) -> ClientServer:
    return ClientServer.of(inst, (await call.services.servers.where([inst]))[inst.id])


# ---------------------------------------------------------------- servers


@router.route(
    "GET",
    f"{BASE}/server",
    query=ServerListQuery,
    response=ServerPage,
    errors={400: "Bad page, limit or filter", **FOREIGN},
)
async def list_servers(call: Call, query: ServerListQuery) -> ServerPage:
    """List the client's servers, oldest first, a page at a time; filter by status and tags (all must
    match)."""
    states, tags = query.filters()
    page = await call.services.clients.list_servers(
        call.caller, client_id(call), page=query.page, limit=query.limit, states=states, tags=tags
    )
    places = await call.services.servers.where(page.items)
    return ServerPage(
        page=page.page,
        limit=page.limit,
        total=page.total,
        data=[ClientServer.of(i, places[i.id]) for i in page.items],
    )


@router.route(
    "POST",
    f"{BASE}/server",
    body=ServerOrder,
    response=ClientServer,
    status=201,
    errors={
        400: "Bad field, or no default for a field left out",
        409: "No placement in the location's region chain",
        503: "No Ready node anywhere in the chain",
        **FOREIGN,
    },
)
async def order_server(call: Call, body: ServerOrder) -> ClientServer:
    """Order a server of a size in a location (region or country), optionally tagged."""
    inst = await call.services.clients.order(
        call.caller,
        client_id(call),
        name=body.name,
        size=body.size,
        location=body.location,
        image=body.image,
        tags=body.tags,
    )
    return await render(call, inst)


@router.route(
    "GET", f"{BASE}/server/{{serverUuid}}", response=ClientServer, errors={404: "No such server", **FOREIGN}
)
async def get_server(call: Call) -> ClientServer:
    """Fetch a server of the client by its UUID."""
    return await render(
        call, await call.services.clients.get_server(call.caller, client_id(call), server_uuid(call))
    )


@router.route(
    "DELETE",
    f"{BASE}/server/{{serverUuid}}",
    response=ClientServer,
    errors={404: "No such server", 409: "Already released or releasing", **FOREIGN},
)
async def release_server(call: Call) -> ClientServer:
    """Release a server: its container is removed and its addresses freed; the record stays for usage."""
    return await render(
        call, await call.services.clients.release_server(call.caller, client_id(call), server_uuid(call))
    )


@router.route(
    "POST",
    f"{BASE}/server/{{serverUuid}}/tag/{{tag}}",
    response=ClientServer,
    errors={400: "Bad tag, or the server carries 60 tags", 404: "No such server", **FOREIGN},
)
async def tag_server(call: Call) -> ClientServer:
    """Add a tag to a server (the client's tag is created when new)."""
    inst = await call.services.clients.tag_server(
        call.caller, client_id(call), server_uuid(call), call.path("tag")
    )
    return await render(call, inst)


@router.route(
    "DELETE",
    f"{BASE}/server/{{serverUuid}}/tag/{{tag}}",
    response=ClientServer,
    errors={400: "Bad tag", 404: "No such server, or it does not carry the tag", **FOREIGN},
)
async def untag_server(call: Call) -> ClientServer:
    """Remove a tag from a server (the client keeps the tag)."""
    inst = await call.services.clients.untag_server(
        call.caller, client_id(call), server_uuid(call), call.path("tag")
    )
    return await render(call, inst)


# ---------------------------------------------------------------- tags


@router.route("GET", f"{BASE}/tag", query=Paging, response=TagPage, errors=FOREIGN)
async def list_tags(call: Call, query: Paging) -> TagPage:
    """The client's tags by name, with how many servers carry each."""
    page = await call.services.clients.list_tags(
        call.caller, client_id(call), page=query.page, limit=query.limit
    )
    return TagPage(page=page.page, limit=page.limit, total=page.total, data=[Tag.of(t) for t in page.items])


@router.route(
    "POST", f"{BASE}/tag", body=TagBody, response=Tag, errors={400: "Bad tag", 409: "Tag exists", **FOREIGN}
)
async def create_tag(call: Call, body: TagBody) -> Tag:
    """Create a tag for the client."""
    return Tag.of(await call.services.clients.create_tag(call.caller, client_id(call), body.tag))


@router.route(
    "GET", f"{BASE}/tag/{{tag}}", response=TagDetail, errors={400: "Bad tag", 404: "No such tag", **FOREIGN}
)
async def get_tag(call: Call) -> TagDetail:
    """A tag of the client with the servers that carry it."""
    info, servers = await call.services.clients.get_tag(call.caller, client_id(call), call.path("tag"))
    return TagDetail(**Tag.of(info).model_dump(), serverUuids=servers)


@router.route(
    "PATCH",
    f"{BASE}/tag/{{tag}}",
    body=TagBody,
    response=Tag,
    errors={400: "Bad tag", 404: "No such tag", 409: "The new name exists", **FOREIGN},
)
async def rename_tag(call: Call, body: TagBody) -> Tag:
    """Rename a tag: every server carrying it carries the new name."""
    return Tag.of(
        await call.services.clients.rename_tag(call.caller, client_id(call), call.path("tag"), body.tag)
    )


@router.route(
    "DELETE", f"{BASE}/tag/{{tag}}", status=204, errors={400: "Bad tag", 404: "No such tag", **FOREIGN}
)
async def delete_tag(call: Call) -> None:
    """Delete a tag: it is taken off every server."""
    await call.services.clients.delete_tag(call.caller, client_id(call), call.path("tag"))


# ---------------------------------------------------------------- usage


@router.route(
    "GET", f"{BASE}/usage", query=UsageQuery, response=UsagePage, errors={400: "Bad time or page", **FOREIGN}
)
async def usage(call: Call, query: UsageQuery) -> UsagePage:
    """Servers that ran within the deliveredAt to releasedAt window, with the seconds billable inside it."""
    start, end = parse_time(query.deliveredAt), parse_time(query.releasedAt)
    page, window_end = await call.services.clients.usage(
        call.caller, client_id(call), start=start, end=end, page=query.page, limit=query.limit
    )
    places = await call.services.servers.where([r.instance for r in page.items])
    return UsagePage(
        page=page.page,
        limit=page.limit,
        total=page.total,
        deliveredAt=int(start) if start is not None else None,
        releasedAt=window_end,
        data=[UsageRow.of(r, places[r.instance.id]) for r in page.items],
    )
