"""Moorage's own node routes (beside the panel dialect's): join tokens."""

from __future__ import annotations

from pydantic import BaseModel, Field

from coordinator.api.panel_models import iso
from coordinator.api.routing import Call, Router

router = Router("nodes")


class JoinToken(BaseModel):
    joinToken: str = Field(description="One-time enrollment token; shown only in this answer.")
    expiresAt: str
    agentCommand: str


@router.route(
    "POST",
    "/api/nodes/{id}/join-token",
    response=JoinToken,
    status=201,
    access="admin",
    errors={404: "No such node"},
)
async def issue_join_token(call: Call) -> JoinToken:
    """A fresh join token for the node; every earlier one stops working."""
    token, expires = await call.services.nodes.issue_join_token(call.path("id"))
    return JoinToken(
        joinToken=token, expiresAt=iso(expires) or "", agentCommand=call.services.nodes.agent_command(token)
    )
