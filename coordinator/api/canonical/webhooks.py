"""Webhooks: POST/GET/DELETE /api/webhooks. An organization's hook gets what its event stream shows; an
admin's gets the whole fleet's. The secret that signs each POST is shown once, at creation."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from coordinator.api.dialects.panel_models import Body
from coordinator.api.fields import Text
from coordinator.api.routing import Call, Router
from coordinator.domain.records import EVENT_KINDS, Webhook
from coordinator.domain.times import iso
from coordinator.service.webhooks import SIGNATURE_HEADER, NewWebhook

router = Router("webhooks")

Kind = Literal[EVENT_KINDS]  # type: ignore[valid-type]


class WebhookCreate(Body):
    url: str = Field(
        min_length=1, max_length=2000, description="An http:// or https:// URL to POST events to."
    )
    description: Text = Field("", max_length=200)
    kinds: list[Kind] | None = Field(
        None, max_length=20, description="Only these kinds of event; all if left out."
    )


class WebhookOut(BaseModel):
    id: str
    url: str
    description: str
    kinds: list[str] | None
    organizationId: int
    fleetWide: bool = Field(description="Made by an admin: gets every event of the fleet.")
    createdAt: str | None
    deliveredUpTo: int = Field(description="Every event up to this id has been delivered or given up on.")
    delivered: int
    lastDeliveredAt: str | None
    failures: int = Field(description="Failed attempts at the next event; 0 once it is delivered.")
    lastError: str | None
    lastErrorAt: str | None
    nextAttemptAt: str | None
    dropped: int = Field(description="Events given up on after webhooks.max_attempts.")

    @classmethod
    def of(cls, h: Webhook) -> WebhookOut:
        return cls(
            id=h.id,
            url=h.url,
            description=h.description,
            kinds=list(h.kinds) if h.kinds is not None else None,
            organizationId=h.organization_id,
            fleetWide=h.fleet_wide,
            createdAt=iso(h.created_at),
            deliveredUpTo=h.cursor,
            delivered=h.delivered,
            lastDeliveredAt=iso(h.last_delivered_at),
            failures=h.failures,
            lastError=h.last_error,
            lastErrorAt=iso(h.last_error_at),
            nextAttemptAt=iso(h.next_attempt_at),
            dropped=h.dropped,
        )


class WebhookCreated(WebhookOut):
    secret: str = Field(
        description=f"Signs every POST: {SIGNATURE_HEADER} is sha256= and the hex HMAC-SHA256 of the body "
        "with this secret. Shown only in this answer."
    )


@router.route(
    "POST",
    "/api/webhooks",
    body=WebhookCreate,
    response=WebhookCreated,
    status=201,
    errors={400: "Not an http(s) URL, an address a tenant may not reach, or an unknown kind"},
)
async def create_webhook(call: Call, body: WebhookCreate) -> WebhookCreated:
    """A hook that gets every event from now on, one POST each, in order, at least once."""
    hook, secret = await call.services.webhooks.create(
        call.caller, NewWebhook(body.url, body.description, tuple(body.kinds) if body.kinds else None)
    )
    return WebhookCreated(**WebhookOut.of(hook).model_dump(), secret=secret)


@router.route("GET", "/api/webhooks", response=list[WebhookOut])
async def list_webhooks(call: Call) -> list[WebhookOut]:
    """The organization's hooks (an admin: every hook), with how delivery goes."""
    return [WebhookOut.of(h) for h in await call.services.webhooks.visible_to(call.caller)]


@router.route("GET", "/api/webhooks/{id}", response=WebhookOut, errors={404: "No such webhook"})
async def show_webhook(call: Call) -> WebhookOut:
    return WebhookOut.of(await call.services.webhooks.get(call.caller, call.path("id")))


@router.route("DELETE", "/api/webhooks/{id}", errors={404: "No such webhook"})
async def delete_webhook(call: Call) -> None:
    """Stop delivering at once."""
    await call.services.webhooks.delete(call.caller, call.path("id"))
