"""GET /status: the fleet at a glance for people, server-rendered (Jinja2, no build step) and kept live from
the event stream. Behind the API's credentials: an API key typed once into the page is traded for a JWT
kept in a signed, HttpOnly, SameSite=Strict cookie (the key never sits in the browser), and the API's own
headers work too. What it shows is what the caller's API calls would: the same use cases, the same
visibility. Not part of the OpenAPI document: it is a page, not an API."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from coordinator.api.auth import SESSION_COOKIE, client_address
from coordinator.api.dialects.panel_models import NodeOut
from coordinator.api.dialects.regions import render as render_region
from coordinator.api.services import SERVICES, Services
from coordinator.cli.render import event_what
from coordinator.domain.records import FleetEvent, Principal
from coordinator.service.errors import ServiceError, Unauthorized
from coordinator.service.events import document

TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)
#: Events the page lists (the newest first).
SHOWN_EVENTS = 50


def describe(e: dict[str, Any]) -> str:
    """An event's news in a few words, as the CLI says it (the page's script says the same of the events
    that follow)."""
    return event_what(e, arrow="→")


def _page(name: str, status: int = 200, **values: Any) -> web.Response:
    nonce = secrets.token_urlsafe(16)
    body = TEMPLATES.get_template(name).render(nonce=nonce, describe=describe, **values)
    return web.Response(
        text=body,
        status=status,
        content_type="text/html",
        headers={
            # Only this page's own script and styles; no framing (clickjacking), no referrer leaking ids.
            "Content-Security-Policy": (
                f"default-src 'self'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
                "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
            ),
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        },
    )


async def _caller(request: web.Request) -> Principal | None:
    try:
        return await request.app[SERVICES].auth.authenticate(request)
    except Unauthorized:
        return None


async def _fleet(services: Services, caller: Principal) -> dict[str, Any]:
    now = services.clock()
    regions = [render_region(v).model_dump() for v in await services.regions.list_views(caller)]
    nodes = [NodeOut.of(v, now).model_dump() for v in await services.nodes.list_views(caller)]
    for region in regions:
        limit = max(region["serverLimit"], 1)
        region["usedPercent"] = min(100, round(100 * region["stats"]["serverCount"] / limit))
    return {"regions": regions, "nodes": nodes}


def _events(found: list[FleetEvent]) -> list[dict[str, Any]]:
    return [document(e) for e in reversed(found)]


async def status(request: web.Request) -> web.Response:
    """The page; the sign-in form when no credential (or a stale one) came with the request."""
    caller = await _caller(request)
    if caller is None:
        return _page("login.html.j2", 200)
    services = request.app[SERVICES]
    found = await services.events.after(caller, 0, SHOWN_EVENTS, newest=True)
    return _page(
        "status.html.j2",
        who=caller.username,
        admin=caller.admin,
        events=_events(found),
        shown=SHOWN_EVENTS,
        **await _fleet(services, caller),
    )


async def fleet_fragment(request: web.Request) -> web.Response:
    """The regions and nodes alone: what the page's script swaps in when the fleet changes."""
    caller = await _caller(request)
    if caller is None:
        return web.Response(status=401, text="sign in again", content_type="text/plain")
    return _page("fleet.html.j2", **await _fleet(request.app[SERVICES], caller))


def _cross_site(request: web.Request) -> bool:
    """A form posted from another site (login CSRF: signing someone in under another's key)."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return True
    origin = request.headers.get("Origin")
    return origin is not None and origin != "null" and origin.split("://", 1)[-1] != request.host


async def sign_in(request: web.Request) -> web.Response:
    if _cross_site(request):
        return _page("login.html.j2", 403, error="Sign in from this page.")
    form = await request.post()
    key = form.get("key")
    if not isinstance(key, str) or not key.strip() or len(key) > 4096:
        return _page("login.html.j2", 400, error="Give an API key.")
    services = request.app[SERVICES]
    try:
        token, expires = await services.access.session_token(key, client_address(request))
    except ServiceError as exc:
        return _page("login.html.j2", exc.status, error=str(exc))
    answer = web.HTTPSeeOther("/status")
    answer.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=max(int(expires - services.clock()), 1),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure or request.headers.get("X-Forwarded-Proto", "") == "https",
    )
    return answer  # returned, not raised: aiohttp sends a raised one's cookies only since 3.9


async def sign_out(request: web.Request) -> web.Response:
    if _cross_site(request):
        return _page("login.html.j2", 403, error="Sign out from this page.")
    answer = web.HTTPSeeOther("/status")
    answer.del_cookie(SESSION_COOKIE, path="/")
    return answer


def install(app: web.Application) -> None:
    app.router.add_get("/status", status)
    app.router.add_get("/status/fleet", fleet_fragment)
    app.router.add_post("/status/login", sign_in)
    app.router.add_post("/status/logout", sign_out)
