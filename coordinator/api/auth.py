"""Who is calling: an API key in ``x-api-key`` or ``Authorization: Bearer``. Messages are the panel
document's own ("API key is required", "API Key Invalid") so Skyport clients show what they expect."""

from __future__ import annotations

from aiohttp import web

from coordinator import secrets
from coordinator.service.core import Core
from coordinator.service.errors import Unauthorized
from coordinator.store import users as users_store
from coordinator.store.users import Principal


def presented_key(request: web.Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


class Authenticator:
    def __init__(self, core: Core) -> None:
        self.core = core

    async def authenticate(self, request: web.Request) -> Principal:
        key = presented_key(request)
        if key is None:
            raise Unauthorized("API key is required")
        async with self.core.store.read() as conn:
            found = await users_store.principal_for_key_digest(conn, secrets.digest(key))
        if found is None:
            raise Unauthorized("API Key Invalid")
        return found[1]
