"""One coordinator and one real agent on this host's Docker for every client family in tests/compat/. The
coordinator runs as an operator would start it for those clients: its own built-in catalogs (no catalog
files configured), and for the autoscaler only `servers.image` set, as the autoscaler's operator sets
its agent image. The node is in no region."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.daemons import (
    RESPONSES,
    AgentProcess,
    Api,
    CoordinatorProcess,
    create_node,
    leave_no_containers,
    node_view,
    port_block,
    wait_for,
)
from tests.dockerenv import require_docker

#: Only the image, as the autoscaler's operator configures it; size and region are left to the defaults.
SERVERS = {"image": "busybox-httpd"}


@dataclass
class Compat:
    coordinator: CoordinatorProcess
    agent: AgentProcess
    node: dict[str, Any]
    ports: list[int]
    tmp: Path

    @property
    def admin(self) -> Api:
        return self.coordinator.api()

    @property
    def url(self) -> str:
        return str(self.coordinator.endpoints["http"])


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text) if self.text else None


def send(
    base: str, method: str, path: str, *, headers: dict[str, str] | None = None, body: bytes | None = None
) -> Reply:
    """Exactly what a client puts on the wire: these headers and this body, nothing added (urllib would
    add a Content-Type to a POST; Go's and Node's clients do not when there is no body)."""
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=60)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        text = resp.read().decode(errors="replace")
        RESPONSES.append(text)  # the suite's secret scan reads every answer
        return Reply(resp.status, dict(resp.getheaders()), text)
    finally:
        conn.close()


@pytest.fixture(scope="package")
def compat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compat]:
    require_docker()
    tmp = tmp_path_factory.mktemp("compat")
    coordinator = CoordinatorProcess(
        tmp / "coordinator", extra={"catalog": {"images": "", "sizes": ""}, "servers": SERVERS}
    )
    coordinator.start()
    ports = port_block(16)
    node = create_node(coordinator.api(), ports, name="compat-node", ram=8192)
    agent = AgentProcess(tmp / "agent", coordinator, str(node["joinToken"]))
    agent.start()
    world = Compat(coordinator, agent, node, ports, tmp)
    try:
        wait_for(lambda: node_view(world.admin, node["id"])["isOnline"], 30, "the node to come online")
        yield world
    finally:
        agent.stop()
        coordinator.stop()
        leave_no_containers(str(node["id"]))
