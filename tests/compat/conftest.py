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
from typing import Any

import pytest

from bench.daemons import RESPONSES, OneNodeFleet, one_node_fleet
from tests.dockerenv import require_docker

#: Only the image, as the autoscaler's operator configures it; size and region are left to the defaults.
SERVERS = {"image": "busybox-httpd"}


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


def send_json(base: str, method: str, path: str, headers: dict[str, str], payload: Any = None) -> Reply:
    """As a browser or axios client sends a call: JSON with its Content-Type when there is a payload."""
    if payload is None:
        return send(base, method, path, headers=headers)
    typed = {**headers, "Content-Type": "application/json"}
    return send(base, method, path, headers=typed, body=json.dumps(payload).encode())


def url(fleet: OneNodeFleet) -> str:
    return str(fleet.coordinator.endpoints["http"])


@pytest.fixture(scope="package")
def compat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OneNodeFleet]:
    require_docker()
    options = {"catalog": {"images": "", "sizes": ""}, "servers": SERVERS}
    with one_node_fleet(tmp_path_factory.mktemp("compat"), ports=16, coordinator_options=options) as fleet:
        yield fleet
