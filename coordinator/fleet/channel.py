"""The one port a use case reaches an agent through: "tell node N to do X (and wait for its answer)".

Today the fleet of this process implements it over its own sessions; a channel that reaches agents
connected to another coordinator can implement it too, and no use case changes.
"""

from __future__ import annotations

from typing import Protocol

from coordinator.domain.agents import Command, CommandResult


class NodeChannel(Protocol):
    def is_connected(self, node_id: str) -> bool:
        """Whether a command sent now reaches the node's agent at once."""
        ...

    def post(self, node_id: str, command: Command) -> bool:
        """Send without waiting; False when the node is not reachable. Nothing is lost then: the node's
        desired set is in the database and reaches its agent in the Welcome of its next session."""
        ...

    async def send(self, node_id: str, command: Command, wait_s: float) -> CommandResult | None:
        """Send and wait up to ``wait_s`` for the agent's result; None when it is not reachable, does not
        answer in time, or its session ends first."""
        ...
