"""A fleet for the servers and client dialects: a coordinator with the size catalog and `servers:`
defaults, two regions (eu in DE falling back to us in US) with one node each, and users of their own
organizations."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.daemons import (
    AgentProcess,
    Api,
    CoordinatorProcess,
    FakeAgents,
    Process,
    create_node,
    leave_no_containers,
    port_block,
    wait_for,
)

SERVERS = {"image": "busybox-httpd", "region": "eu", "size": "nano"}


@dataclass
class SizedFleet:
    coordinator: CoordinatorProcess
    tmp: Path
    regions: dict[str, str] = field(default_factory=dict)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    agents: list[Process] = field(default_factory=list)

    @property
    def api(self) -> Api:
        return self.coordinator.api()

    def region(self, identifier: str, country: str, limit: int, fallback: str | None = None) -> str:
        body: dict[str, Any] = {"name": identifier.upper(), "identifier": identifier, "countryId": country}
        body["serverLimit"] = limit
        if fallback:
            body["fallbackRegionId"] = self.regions[fallback]
        r = self.api.post("/api/regions", body)
        assert r.status == 201, r.body
        self.regions[identifier] = r.body["id"]
        return str(r.body["id"])

    def node(self, region: str, ports: int = 8) -> dict[str, Any]:
        made = create_node(self.api, port_block(ports), name=f"node-{region}", regionId=self.regions[region])
        self.nodes[region] = made
        return made

    def user(self, name: str, organization: int | None = None) -> tuple[Api, int]:
        """A user of ``organization`` (default: a new one of its own): (their API, their organization id)."""
        body: dict[str, Any] = {"username": name, "email": f"{name}@example.com", "password": "pw-" * 4}
        if organization is not None:
            body["organization"] = organization
        r = self.api.post("/api/auth/create-user", body)
        assert r.status == 201, r.body
        token = self.api.post("/api/auth/login", {"username": name, "password": "pw-" * 4}, key=False)
        api = Api(self.api.url, None, headers={"Authorization": f"Bearer {token.body['token']}"})
        me = api.get("/api/users").body
        return api, int(next(u for u in me if u["username"] == name)["organizationId"])

    def wait_online(self) -> None:
        def online() -> bool:
            listed = {n["id"]: n["isOnline"] for n in self.api.get("/api/nodes").body}
            return all(listed.get(n["id"]) for n in self.nodes.values())

        wait_for(online, 30, "every node online")


@contextlib.contextmanager
def sized_fleet(
    tmp: Path,
    *,
    eu_limit: int = 2,
    docker: tuple[str, ...] = (),
    extra: dict[str, Any] | None = None,
) -> Iterator[SizedFleet]:
    """Nodes in eu (DE, serverLimit ``eu_limit``, falling back to us) and us (US): fake agents (real agent
    code, in-memory runtime) on both, or real agent processes on this host's engine for the regions named
    in ``docker``."""
    coordinator = CoordinatorProcess(tmp / "coordinator", extra={"servers": SERVERS, **(extra or {})})
    coordinator.start()
    world = SizedFleet(coordinator, tmp)
    try:
        world.region("us", "US", 50)
        world.region("eu", "DE", eu_limit, fallback="us")
        for region in docker:
            token = world.node(region)["joinToken"]
            agent = AgentProcess(tmp / f"agent-{region}", coordinator, token)
            agent.start()
            world.agents.append(agent)
        if not docker:
            tokens = [world.node(r)["joinToken"] for r in ("eu", "us")]
            agents = FakeAgents(tmp / "agents", coordinator, tokens)
            agents.start()
            world.agents.append(agents)
        world.wait_online()
        yield world
    finally:
        for p in world.agents:
            p.stop()
        coordinator.stop()
        if docker:
            for node in world.nodes.values():
                leave_no_containers(node["id"])
