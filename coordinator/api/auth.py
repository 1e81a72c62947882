"""Credentials on the wire: ``x-api-key: KEY``, ``Authorization: Bearer KEY`` or ``Authorization: Bearer
JWT``. What they mean is the access service's business; this module only reads headers. Messages are the
panel document's own ("API key is required", "API Key Invalid") so Skyport clients show what they expect."""

from __future__ import annotations

from aiohttp import web

from coordinator.service.access import AccessService
from coordinator.store.users import Principal

KEY_ID: web.RequestKey[str | None] = web.RequestKey("key_id", str)


def presented_credential(request: web.Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def client_address(request: web.Request) -> str:
    return request.remote or "unknown"


class Authenticator:
    def __init__(self, access: AccessService) -> None:
        self.access = access

    async def authenticate(self, request: web.Request) -> Principal:
        principal, key_id = await self.access.authenticate(
            presented_credential(request), client_address(request)
        )
        request[KEY_ID] = key_id
        return principal
