"""Credentials on the wire: ``x-api-key: KEY``, ``Authorization: Bearer KEY`` or ``Authorization: Bearer
JWT``. What they mean is the access service's business; this module only reads headers. Messages are the
panel document's own ("API key is required", "API Key Invalid") so Skyport clients show what they expect."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence

from aiohttp import web

from coordinator.domain.records import Principal
from coordinator.service.access import AccessService

KEY_ID: web.RequestKey[str | None] = web.RequestKey("key_id", str)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: auth.trusted_proxies, set on the application when it is built.
TRUSTED_PROXIES: web.AppKey[tuple[str, ...]] = web.AppKey("trusted_proxies", tuple)


@functools.cache
def _networks(trusted: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(t, strict=False) for t in trusted)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


def _within(address: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: Sequence[Network]) -> bool:
    return any(address.version == n.version and address in n for n in networks)


def client_address(request: web.Request) -> str:
    """Who is asking, for the failure limits and the audit log: the peer, or behind a trusted proxy the
    nearest forwarded address that is not a proxy. IPv6 clients count by /64 (one host has them all)."""
    peer = _address(request.remote or "")
    if peer is None:
        return request.remote or "unknown"
    trusted = _networks(request.app.get(TRUSTED_PROXIES, ()))
    if trusted and _within(peer, trusted):
        hops = ",".join(request.headers.getall("X-Forwarded-For", [])).split(",")
        for hop in reversed(hops):
            found = _address(hop)
            if found is not None and not _within(found, trusted):
                peer = found
                break
    if peer.version == 6:
        return str(ipaddress.ip_network(f"{peer}/64", strict=False))
    return str(peer)


#: The status page's session cookie: a JWT, HttpOnly and SameSite=Strict (api/status_page.py).
SESSION_COOKIE = "moorage_session"
#: Where the cookie counts: the page and what it reads (never a route that changes anything).
COOKIE_PATHS = ("/status", "/api/events")


def presented_credential(request: web.Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if request.method in ("GET", "HEAD") and any(
        request.path == p or request.path.startswith(p + "/") for p in COOKIE_PATHS
    ):
        return request.cookies.get(SESSION_COOKIE) or None
    return None


class Authenticator:
    def __init__(self, access: AccessService) -> None:
        self.access = access

    async def authenticate(self, request: web.Request) -> Principal:
        principal, key_id = await self.access.authenticate(
            presented_credential(request), client_address(request)
        )
        request[KEY_ID] = key_id
        return principal
