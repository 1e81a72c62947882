"""The aiohttp application: every dialect's routes, one JSON error shape for everything outside them (no
HTML error pages, no tracebacks), request ids in the logs."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from common.logging import get
from coordinator import __version__
from coordinator.api import openapi, status_page
from coordinator.api.auth import TRUSTED_PROXIES
from coordinator.api.canonical import accounts, events, images, logs, nodes, system, webhooks
from coordinator.api.dialects import client, panel, regions, servers, vpn
from coordinator.api.routing import REQUEST_ID, Route, Router, render_error
from coordinator.api.services import SERVICES, Services
from coordinator.domain.failures import StoreBusy

log = get("coordinator.http")

ROUTERS: list[Router] = [
    system.router,
    accounts.router,
    nodes.router,
    events.router,
    webhooks.router,
    logs.router,
    panel.router,
    images.router,
    regions.router,
    servers.router,
    client.router,
    vpn.router,
]

HandlerT = Callable[[web.Request], Awaitable[web.StreamResponse]]


#: A client's own request id is kept (it ties its logs to ours) when it is a plain token that fits the
#: audit log's column.
CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,32}")


def request_id_of(request: web.Request) -> str:
    given = request.headers.get("x-request-id", "")
    return given if CLIENT_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]


@web.middleware
async def errors_as_json(request: web.Request, handler: HandlerT) -> web.StreamResponse:
    request_id = request_id_of(request)
    structlog.contextvars.bind_contextvars(request_id=request_id)
    request[REQUEST_ID] = request_id
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {404: "no such route", 405: f"method {request.method} is not allowed here"}.get(
            exc.status, exc.reason
        )
        response = render_error(exc.status, message, None)
        if isinstance(exc, web.HTTPMethodNotAllowed):
            response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
    except StoreBusy as exc:
        response = render_error(503, str(exc), None)
        response.headers["Retry-After"] = "1"
    except Exception:
        log.exception("unhandled error", method=request.method, path=request.path)
        response = render_error(500, f"internal error (request {request_id})", None)
    finally:
        structlog.contextvars.unbind_contextvars("request_id")
    response.headers["x-request-id"] = request_id
    return response


def all_routes() -> list[Route]:
    return [r for router in ROUTERS for r in router.routes]


def build(services: Services) -> web.Application:
    app = web.Application(middlewares=[errors_as_json], client_max_size=1024**2)
    app[SERVICES] = services
    app[TRUSTED_PROXIES] = services.trusted_proxies
    for router in ROUTERS:
        router.install(app)
    status_page.install(app)  # a page for people, outside the API's document
    app[system.OPENAPI] = openapi.build(all_routes(), __version__)
    return app
