"""The one port a use case reaches an agent through: "tell node N to do X (and wait for its answer)".

The fleet of this process implements it over its own sessions (one coordinator); fleet/cluster.py over
the sessions of every coordinator on the database. No use case knows which.
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

    def close(self, node_id: str) -> None:
        """The node was deleted: end its agent's session, wherever it is."""
        ...

    async def send(self, node_id: str, command: Command, wait_s: float) -> CommandResult | None:
        """Send and wait up to ``wait_s`` for the agent's result; None when it is not reachable, does not
        answer in time, or its session ends first."""
        ...
