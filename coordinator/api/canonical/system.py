"""Canonical routes of the coordinator itself: what it is, health, the OpenAPI document, metrics."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from coordinator import __version__
from coordinator.api.routing import Call, Router

router = Router("system")

OPENAPI: web.AppKey[dict[str, Any]] = web.AppKey("openapi", dict)


class Service(BaseModel):
    name: str
    version: str
    description: str
    openapi: str = Field(description="Where every route is described.")
    dialects: dict[str, str] = Field(description="The API documents served, by dialect, with their system.")


DIALECTS = {
    "panel": "Skyport panel 0.3 (/api/users, /api/instances, /api/nodes, /api/images, ...)",
    "regions": "Kyro game panel regions (/api/regions)",
    "servers": "Drone autoscaler (/api/servers, /version)",
    "client": "i3D.net FlexMetal client API (/api/v1/client/{clientId}/...)",
    "vpn": "Bingo VPN open API v2 (/api/v2/nodes/)",
}


@router.route("GET", "/", response=Service, access="public")
async def service(call: Call) -> Service:
    """What answers here (panels check that the base URL answers 200 before they start)."""
    return Service(
        name="Moorage",
        version=__version__,
        description="A fleet runner for hosting panels: containers across hosts, five panel APIs.",
        openapi="/api/openapi.json",
        dialects=DIALECTS,
    )


class Health(BaseModel):
    status: str
    version: str
    database: str
    nodesConnected: int = Field(description="Agent sessions this coordinator holds.")
    leader: bool = Field(
        description="Whether this coordinator leads the ones on its database (runs the sweeps, watches the "
        "nodes no coordinator holds); a coordinator alone always does."
    )


@router.route("GET", "/api/health", response=Health, access="public")
async def health(call: Call) -> Health:
    """Liveness and the database's reachability, for load balancers and `make run`."""
    database, connected, leader = await call.services.nodes.health()
    return Health(
        status="ok", version=__version__, database=database, nodesConnected=connected, leader=leader
    )


@router.route("GET", "/api/openapi.json", response=dict[str, Any], access="public")
async def openapi(call: Call) -> web.Response:
    """This document: every route, its models and its errors."""
    return web.json_response(call.request.app[OPENAPI])


@router.route("GET", "/metrics", response=str, access="admin")
async def metrics(call: Call) -> web.Response:
    """Prometheus metrics (text exposition): heartbeats and their timings, sessions, batch writes."""
    return web.Response(body=call.services.metrics.render(), content_type="text/plain", charset="utf-8")
