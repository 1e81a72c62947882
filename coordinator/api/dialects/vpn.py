"""The vpn dialect (seed 004, Bingo VPN's open API v2): an organization's VPN endpoints ("nodes" there; each
is an instance here, and the document's `server` is the host node it runs on). Answers are wrapped
`{success, data, error}`, lists are `{count, next, previous, results}`, times "YYYY-MM-DD HH:MM:SS" (UTC), and
errors the document's own bodies: `{"detail": ...}`, or `{field: [message]}` for a bad field. Every path
answers with and without its trailing slash."""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import pycountry
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from coordinator.api.fields import Bool, Int, Text
from coordinator.api.routing import Call, Handler, Router
from coordinator.domain.records import Instance, InstanceState
from coordinator.service.errors import BadRequest, NotFound
from coordinator.service.servers import Where
from coordinator.service.vpn import NotRedeployable

T = TypeVar("T")
NUMBER = re.compile(r"[0-9]{1,9}")
S = InstanceState


def drf_error(code: int, message: str, field: str | None) -> web.Response:
    if field is not None and code == 400:
        prefix = f"{field}: "
        return web.json_response({field: [message.removeprefix(prefix)]}, status=code)
    return web.json_response({"detail": message}, status=code)


class DrfDetail(BaseModel):
    detail: str


#: Django REST framework's shapes: {"detail": ...}, or per field {"name": ["..."]} for a 400.
NOT_FOUND = "Can not find the server"
router = Router(
    "vpn",
    render_error=drf_error,
    error_model=DrfDetail | dict[str, list[str]],
    messages={"vpn.node_not_found": NOT_FOUND},
)

#: The lifecycle table's vpn column: (code, display). 11, 12, 21 and -1 are ours (the document lists the
#: others); an instance waiting to be released for its replacement (or expiry) is 20 whatever it runs.
STATUS: dict[InstanceState, tuple[int, str]] = {
    S.PENDING: (-10, "Preparing"),
    S.PROVISIONING: (-10, "Preparing"),
    S.CREATED: (9, "Deployment Successful"),
    S.STARTING: (10, "Awaiting Heartbeat"),
    S.RUNNING: (19, "Ready"),
    S.UNHEALTHY: (18, "Heartbeat Abnormal"),
    S.STOPPED: (11, "Stopped"),
    S.SUSPENDED: (12, "Suspended"),
    S.RELEASING: (20, "Pending Release"),
    S.RELEASED: (21, "Released"),
    S.ERROR: (-1, "Failed"),
}
PENDING_RELEASE = (20, "Pending Release")


def status(inst: Instance) -> tuple[int, str]:
    if inst.pending_release and inst.live:
        return PENDING_RELEASE
    return STATUS[inst.state]


#: The container's own state (the document's "cloud provider instance" status).
INSTANCE_STATUS: dict[InstanceState, tuple[int, str]] = {
    S.CREATED: (0, "Created"),
    S.STARTING: (1, "Running"),
    S.RUNNING: (1, "Running"),
    S.UNHEALTHY: (3, "Abnormal"),
    S.STOPPED: (2, "Stopped"),
    S.SUSPENDED: (2, "Stopped"),
    S.RELEASING: (4, "Removing"),
}


def stamp(at: float | None) -> str | None:
    if at is None:
        return None
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def country_name(code: str) -> str:
    found = pycountry.countries.get(alpha_2=code.upper()) if code else None
    return str(getattr(found, "common_name", None) or found.name) if found else code.lower()


class Organization(BaseModel):
    id: int
    name: str


class HostServer(BaseModel):
    id: str
    name: str
    host: str
    region: str


class VpnNode(BaseModel):
    id: int
    name: str
    organization: Organization
    country: str
    country_display: str
    ip: str | None
    host: str | None
    port: int | None
    instance_id: str | None
    instance_status: int
    instance_status_display: str
    bandwidth: float = Field(description="Allocated bandwidth, Mbps (0: no cap).")
    bandwidth_used_m: float = Field(description="Measured bandwidth in and out, Mbps.")
    status: int
    status_display: str
    can_redeploy: bool
    server: HostServer | None
    info: str | None
    expire_time: str | None
    status_update_time: str
    update_time: str
    create_time: str


class Wrapped(BaseModel, Generic[T]):
    success: bool = True
    data: T
    error: None = None


class NodeList(BaseModel):
    count: int
    next: str | None
    previous: str | None
    results: list[VpnNode]


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    page: Int = Field(1, ge=1, le=1_000_000)
    page_size: Int = Field(20, ge=1, le=100)


class NodePatch(BaseModel):
    """Only ``name`` is editable; anything else is refused by name."""

    model_config = ConfigDict(extra="allow")

    name: Text | None = Field(None, min_length=1, max_length=100)


class Redeploy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    force: Bool = False
    country_code: str | None = Field(None, description="ISO-3166 alpha-2; default: the node's country.")


class VpnNodeStatus(BaseModel):
    id: int
    status: int
    status_display: str


class NewNode(VpnNodeStatus):
    country: str
    country_display: str


class Redeployed(BaseModel):
    original_node: VpnNodeStatus
    new_node: NewNode


def _ip(place: Where) -> str | None:
    """The address clients dial: the allocation's own address, else the host's when that is an IP."""
    if place.bind_address and place.bind_address not in ("0.0.0.0", "::"):
        return place.bind_address
    try:
        return str(ipaddress.ip_address(place.host))
    except ValueError:
        return None


def render(inst: Instance, place: Where, org_name: str) -> VpnNode:
    code, display = status(inst)
    instance_code, instance_display = (
        INSTANCE_STATUS.get(inst.state, (-1, "None")) if inst.container_id else (-1, "None")
    )
    used = round(inst.rx_mbps + inst.tx_mbps, 3)
    return VpnNode(
        id=inst.number,
        name=inst.name,
        organization=Organization(id=inst.organization_id, name=org_name),
        country=place.country.lower(),
        country_display=country_name(place.country),
        ip=_ip(place),
        host=place.host or None,
        port=place.port or None,
        instance_id=inst.container_id,
        instance_status=instance_code,
        instance_status_display=instance_display,
        bandwidth=float(inst.bandwidth_mbps),
        bandwidth_used_m=used,
        status=code,
        status_display=display,
        can_redeploy=inst.redeploy_max_count > 0 and used < 1,
        server=HostServer(id=inst.node_id, name=place.node_name, host=place.host, region=place.region)
        if inst.node_id
        else None,
        info=inst.limit_error or inst.error,
        expire_time=stamp(inst.expires_at),
        status_update_time=stamp(inst.state_changed_at) or "",
        update_time=stamp(inst.updated_at) or "",
        create_time=stamp(inst.created_at) or "",
    )


async def rendered(call: Call, found: list[Instance]) -> list[VpnNode]:
    places = await call.services.servers.where(found)
    names = await call.services.vpn.organization_names({i.organization_id for i in found})
    return [render(i, places[i.id], names.get(i.organization_id, "")) for i in found]


def node_number(call: Call) -> int:
    raw = call.path("node_id")
    if not NUMBER.fullmatch(raw):
        raise NotFound(NOT_FOUND)
    return int(raw)


def both(method: str, path: str, **options: Any) -> Callable[[Handler], Handler]:
    """The route as the document writes it (trailing slash) and without the slash."""

    def register(handler: Handler) -> Handler:
        router.route(method, path, **options)(handler)
        router.route(method, path.rstrip("/"), **options)(handler)
        return handler

    return register


def _page_url(call: Call, page: int, page_size: int) -> str:
    return str(call.request.url.update_query(page=page, page_size=page_size))


@both("GET", "/api/v2/nodes/", query=ListQuery, response=Wrapped[NodeList])
async def list_nodes(call: Call, query: ListQuery) -> Wrapped[NodeList]:
    """The organization's VPN endpoints (an admin's: all), by id, released ones left out."""
    found, total = await call.services.vpn.page(call.caller, page=query.page, page_size=query.page_size)
    more = query.page * query.page_size < total
    return Wrapped(
        data=NodeList(
            count=total,
            next=_page_url(call, query.page + 1, query.page_size) if more else None,
            previous=_page_url(call, query.page - 1, query.page_size) if query.page > 1 else None,
            results=await rendered(call, found),
        )
    )


@both("GET", "/api/v2/nodes/{node_id}/", response=Wrapped[VpnNode], errors={404: NOT_FOUND})
async def get_node(call: Call) -> Wrapped[VpnNode]:
    """One endpoint by id."""
    inst = await call.services.vpn.get(call.caller, node_number(call))
    return Wrapped(data=(await rendered(call, [inst]))[0])


@both(
    "PATCH",
    "/api/v2/nodes/{node_id}/",
    body=NodePatch,
    response=Wrapped[VpnNode],
    errors={400: "A field that is not editable, or a bad name", 404: NOT_FOUND},
)
async def update_node(call: Call, body: NodePatch) -> Wrapped[VpnNode]:
    """Rename an endpoint (the only editable field)."""
    number = node_number(call)
    for key in body.model_extra or {}:
        raise BadRequest(f"{key}: This field is not editable.", field=key)
    if body.name is None:
        raise BadRequest("name: This field is required.", field="name")
    inst = await call.services.vpn.rename(call.caller, number, body.name)
    return Wrapped(data=(await rendered(call, [inst]))[0])


@both(
    "POST",
    "/api/v2/nodes/{node_id}/redeploy/",
    body=Redeploy,
    response=Redeployed,
    errors={
        400: "Status, redeploy limit or country code",
        404: NOT_FOUND,
        409: "No placement in that country",
    },
)
async def redeploy_node(call: Call, body: Redeploy) -> Redeployed:
    """Place a new endpoint with the same configuration (by country), and release this one once the new one
    is Ready (at once with force)."""
    try:
        done = await call.services.vpn.redeploy(call.caller, node_number(call), body.force, body.country_code)
    except NotRedeployable as exc:
        # In the document's words (its typo included): the status code, or why.
        if exc.why is None:
            raise BadRequest(f"Server cann't redeploy on this status({status(exc.instance)[0]})") from exc
        if exc.instance.server is not None:
            raise BadRequest(f"Server cann't redeploy: {exc.why}") from exc
        raise BadRequest(f"Server cann't redeploy now ({exc.why})") from exc
    old_code, old_display = status(done.original)
    new_code, new_display = status(done.new)
    return Redeployed(
        original_node=VpnNodeStatus(id=done.original.number, status=old_code, status_display=old_display),
        new_node=NewNode(
            id=done.new.number,
            country=done.country,
            country_display=country_name(done.country),
            status=new_code,
            status_display=new_display,
        ),
    )
