"""The servers dialect (seed 002, the Drone autoscaler's server API): find, list, provision and terminate
servers by name. Times are unix seconds, the four TLS fields base64 PEM, states the autoscaler's names for
the lifecycle of DESIGN.md. Errors are `{"message": ...}` as the autoscaler writes them."""

from __future__ import annotations

import base64
import os

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from coordinator import __version__
from coordinator.api.fields import Text
from coordinator.api.routing import FIELD_NAMES, Call, Router
from coordinator.domain.records import Instance, InstanceState
from coordinator.service.servers import ServerService, Where


def drone_error(status: int, message: str, field: str | None) -> web.Response:
    body = {"message": message} if field is None else {"message": message, "field": field}
    return web.json_response(body, status=status)


class DroneError(BaseModel):
    message: str
    field: str | None = None


#: The autoscaler names where a server goes its region, whether placement looked at a region or a node.
FIELDS = {**FIELD_NAMES, "region": "region", "region_id": "region", "node_id": "region"}
router = Router("servers", render_error=drone_error, error_model=DroneError, field_names=FIELDS)

#: What built this (the autoscaler's answer names its repository; Moorage names its distribution).
SOURCE = "moorage"

S = InstanceState
#: The lifecycle table's servers column (releasing is "shutdown" until the agent has it, then "stopping").
STATE = {
    S.PENDING: "pending",
    S.PROVISIONING: "creating",
    S.CREATED: "created",
    S.STARTING: "staging",
    S.RUNNING: "running",
    S.UNHEALTHY: "running",
    S.STOPPED: "stopped",
    S.SUSPENDED: "stopped",
    S.RELEASED: "stopped",
    S.ERROR: "error",
}


class ServerCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text | None = Field(None, max_length=100, description="Default: agent- and 8 random characters.")
    image: str | None = Field(None, description="Catalog image or Docker reference; default servers.image.")
    region: str | None = Field(None, description="Region id, identifier or country; default servers.region.")
    size: str | None = Field(None, description="Size catalog name; default servers.size.")


class TerminateQuery(BaseModel):
    force: bool = Field(False, description="On a server in error: remove it outright (204).")


class ServerOut(BaseModel):
    id: str
    provider: str
    state: str
    name: str
    image: str
    region: str
    size: str
    platform: str
    address: str
    capacity: int
    secret: str
    error: str
    ca_key: str
    ca_cert: str
    tls_key: str
    tls_cert: str
    created: int
    updated: int
    started: int
    stopped: int


def _b64(pem: str) -> str:
    return base64.b64encode(pem.encode()).decode()


def _unix(at: float | None) -> int:
    return int(at) if at else 0


def render(call: Call, inst: Instance, place: Where, *, just_asked: bool = False) -> ServerOut:
    servers: ServerService = call.services.servers
    identity = servers.opened(call.caller, inst)
    size = servers.size(inst.size)
    if inst.state is S.RELEASING:
        state = "stopping" if servers.removing(inst.id) and not just_asked else "shutdown"
    else:
        state = STATE[inst.state]
    return ServerOut(
        id=inst.id,
        provider=servers.provider,
        state=state,
        name=identity.name,
        image=inst.image,
        region=place.region,
        size=inst.size or "",
        platform=servers.platform,
        address=place.address,
        capacity=size.capacity if size else 0,
        secret=identity.secret,
        error=inst.error or "",
        ca_key=_b64(identity.ca_key),
        ca_cert=_b64(identity.ca_cert),
        tls_key=_b64(identity.tls_key),
        tls_cert=_b64(identity.tls_cert),
        created=_unix(inst.created_at),
        updated=_unix(inst.updated_at),
        started=_unix(inst.delivered_at),
        stopped=_unix(inst.released_at),
    )


async def _one(call: Call, inst: Instance, *, just_asked: bool = False) -> ServerOut:
    return render(call, inst, (await call.services.servers.where([inst]))[inst.id], just_asked=just_asked)


class Version(BaseModel):
    version: str
    commit: str
    source: str


@router.route("GET", "/version", response=Version, access="public")
async def version(call: Call) -> Version:
    """What `drone autoscale version` prints: the release, its commit (when the build recorded one) and
    where the source lives."""
    return Version(version=__version__, commit=os.environ.get("MOORAGE_COMMIT", ""), source=SOURCE)


@router.route("GET", "/api/servers", response=list[ServerOut])
async def list_servers(call: Call) -> list[ServerOut]:
    """List all servers (the caller's organization's; an admin's: all), oldest first."""
    found = await call.services.servers.list(call.caller)
    places = await call.services.servers.where(found)
    return [render(call, inst, places[inst.id]) for inst in found]


@router.route("GET", "/api/servers/{name}", response=ServerOut, errors={404: "No server of that name"})
async def find_server(call: Call) -> ServerOut:
    """Find a server by name."""
    return await _one(call, await call.services.servers.find(call.caller, call.path("name")))


@router.route(
    "POST",
    "/api/servers",
    body=ServerCreate,
    response=ServerOut,
    errors={
        400: "Invalid field, or no default for a field left out",
        409: "Name taken, or no placement in the region chain",
        503: "No Ready node anywhere in the region chain",
    },
)
async def provision_server(call: Call, body: ServerCreate) -> ServerOut:
    """Provision a server: placed by region (with fallbacks) at the size's resources, with its own CA,
    certificate and secret."""
    inst = await call.services.servers.provision(call.caller, body.name, body.image, body.region, body.size)
    return await _one(call, inst)


@router.route(
    "DELETE",
    "/api/servers/{name}",
    query=TerminateQuery,
    response=ServerOut,
    errors={404: "No server of that name"},
)
async def terminate_server(call: Call, query: TerminateQuery) -> ServerOut | web.Response:
    """Terminate: the container is stopped and removed (shutdown, stopping, stopped); a server in error is
    removed outright with ``force``."""
    inst = await call.services.servers.terminate(call.caller, call.path("name"), query.force)
    if inst is None:
        return web.Response(status=204)
    return await _one(call, inst, just_asked=True)
