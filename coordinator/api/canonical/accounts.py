"""Moorage's own access routes: login (JWT) and API keys. Keys are shown once, at creation."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

from coordinator.api.auth import client_address
from coordinator.api.dialects.panel_models import Body
from coordinator.api.fields import Text
from coordinator.api.routing import Call, Router
from coordinator.domain.records import KeyRecord
from coordinator.domain.times import iso

router = Router("access")


class Login(Body):
    username: Text | None = Field(None, min_length=1, max_length=254)
    email: Text | None = Field(None, min_length=1, max_length=254)
    password: str = Field(min_length=1, max_length=1024)

    @model_validator(mode="after")
    def _one_login(self) -> Login:
        if not (self.username or self.email):
            raise ValueError("give username or email")
        return self


class Token(BaseModel):
    token: str = Field(description="A JWT; send it as `Authorization: Bearer TOKEN`.")
    expiresAt: str


class KeyCreate(Body):
    name: Text = Field(min_length=1, max_length=100)


class KeyOut(BaseModel):
    id: str
    name: str
    prefix: str = Field(description="The key's first characters, to recognise it; never the key.")
    userId: str
    createdAt: str | None
    lastUsedAt: str | None
    revokedAt: str | None

    @classmethod
    def of(cls, k: KeyRecord) -> KeyOut:
        return cls(
            id=k.id,
            name=k.name,
            prefix=k.prefix,
            userId=k.user_id,
            createdAt=iso(k.created_at),
            lastUsedAt=iso(k.last_used_at),
            revokedAt=iso(k.revoked_at),
        )


class KeyCreated(KeyOut):
    key: str = Field(description="The API key itself. Shown only in this answer; store it now.")


@router.route(
    "POST",
    "/api/auth/login",
    body=Login,
    response=Token,
    access="public",
    errors={401: "Wrong username, email or password", 429: "Too many failed attempts"},
)
async def login(call: Call, body: Login) -> Token:
    """Trade a username (or email) and password for a JWT."""
    token, expires = await call.services.access.login(
        body.username or body.email or "", body.password, client_address(call.request)
    )
    return Token(token=token, expiresAt=iso(expires) or "")


@router.route("POST", "/api/keys", body=KeyCreate, response=KeyCreated, status=201)
async def create_key(call: Call, body: KeyCreate) -> KeyCreated:
    """A new API key for the caller; the key is in this answer and nowhere else, ever."""
    new = await call.services.access.create_key(call.caller, body.name)
    return KeyCreated(**KeyOut.of(new.record).model_dump(), key=new.key)


@router.route("GET", "/api/keys", response=list[KeyOut])
async def list_keys(call: Call) -> list[KeyOut]:
    """The caller's keys (an admin adds ?all=true for everyone's), without the keys themselves."""
    everyone = call.request.query.get("all", "").lower() in ("1", "true", "yes")
    return [KeyOut.of(k) for k in await call.services.access.list_keys(call.caller, everyone)]


@router.route("DELETE", "/api/keys/{id}", errors={404: "No such key"})
async def revoke_key(call: Call) -> None:
    """Revoke a key at once; it stays listed with revokedAt."""
    await call.services.access.revoke_key(call.caller, call.path("id"))
