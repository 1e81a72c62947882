"""GET /api/events against a real coordinator, agent and Docker: an EventSource-style client sees an
instance's state changes within a second of the coordinator writing them, resumes after its Last-Event-ID
with nothing missed and nothing twice, and a JSON poller sees the same ids; another organization sees none
of them; a webhook gets the same events, signed, in order, after its receiver failed."""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import docker
import pytest

from bench.daemons import TEST_IMAGE, Api, OneNodeFleet, node_view, one_node_fleet, wait_for, wait_state
from tests.dockerenv import inspect_labelled, require_docker, serves
from tests.receiver import Receiver
from tests.streams import following, sse_lines


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OneNodeFleet]:
    require_docker()
    with one_node_fleet(tmp_path_factory.mktemp("events"), 2) as f:
        yield f


def is_state(event: dict[str, Any], iid: str | None = None) -> bool:
    return event["kind"] == "instance.state" and (iid is None or event["instanceId"] == iid)


@dataclass
class Listener:
    """An SSE client on a thread of its own (a plain HTTP connection, as an EventSource holds): each event
    with the time it arrived."""

    url: str
    headers: dict[str, str]
    got: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    conn: http.client.HTTPConnection | None = None

    def start(self) -> Listener:
        where = urllib.parse.urlsplit(self.url)
        self.conn = http.client.HTTPConnection(where.hostname or "", where.port, timeout=30)
        self.conn.request("GET", where.path, headers={"Accept": "text/event-stream", **self.headers})
        response = self.conn.getresponse()
        assert response.status == 200, response.read()
        assert response.headers["Content-Type"].startswith("text/event-stream")
        threading.Thread(target=self._read, args=(response,), daemon=True).start()
        return self

    def _read(self, response: http.client.HTTPResponse) -> None:
        event: dict[str, Any] = {}
        try:
            while line := response.readline().decode():
                line = line.rstrip("\n")
                if line.startswith("id: "):
                    event["id"] = int(line[4:])
                elif line.startswith("data: "):
                    event.update(json.loads(line[6:]))
                elif line == "" and event:
                    self.got.append((time.time(), event))
                    event = {}
        except Exception:  # closed under it: http.client says so in several ways (OSError, ValueError, ...)
            return
        finally:
            with contextlib.suppress(Exception):
                response.close()

    def close(self) -> None:
        """As a browser tab closing: the socket goes at once."""
        if self.conn is not None and self.conn.sock is not None:
            with contextlib.suppress(OSError):
                self.conn.sock.shutdown(socket.SHUT_RDWR)
            self.conn.close()

    def ids(self) -> list[int]:
        return [e["id"] for _, e in self.got]

    def states(self, iid: str) -> list[str]:
        return [e["data"]["new"] for _, e in self.got if is_state(e, iid)]


def test_a_stream_follows_resumes_and_agrees_with_the_json_page(fleet: OneNodeFleet) -> None:
    api = fleet.api
    key = {"x-api-key": fleet.coordinator.admin_key}
    url = f"{api.url}/api/events"
    before = api.get("/api/events?limit=1000").body
    start = before[-1]["id"] if before else 0
    live = Listener(url, key).start()
    try:
        body = {
            "image": TEST_IMAGE,
            "memory": "16",
            "cpu": "1",
            "ports": str(fleet.ports[0]),
            "nodeId": fleet.node_id,
        }
        made = api.post("/api/instances/deploy", {**body, "name": "told"})
        assert made.status == 201, made.body
        iid = made.body["id"]
        wait_state(api, iid, "running", timeout=15)
        wait_for(lambda: "running" in live.states(iid), 5, "the stream to tell it running")
        # Within a second of the coordinator writing it (one host, one clock).
        for arrived, event in live.got:
            written = dt.datetime.fromisoformat(event["at"].replace("Z", "+00:00")).timestamp()
            assert 0 <= arrived - written < 1.0, event
        assert live.ids() == sorted(set(live.ids())) and all(i > start for i in live.ids())
        deleted = api.delete("/api/instance/delete", {"id": iid})
        assert deleted.status == 201, deleted.body
        wait_for(lambda: "released" in live.states(iid), 15, "the stream to tell it released")
    finally:
        live.close()
    told = live.ids()
    # Resuming after the second event gets the rest, nothing twice.
    again = Listener(url, {**key, "Last-Event-ID": str(told[1])}).start()
    try:
        wait_for(lambda: again.ids()[: len(told) - 2] == told[2:], 5, "the rest after Last-Event-ID")
    finally:
        again.close()
    page = api.get(f"/api/events?after={start}&limit=1000").body
    assert [e["id"] for e in page if e.get("instanceId") == iid] == [
        e["id"] for _, e in live.got if e.get("instanceId") == iid
    ]
    assert [e["data"]["new"] for e in page if is_state(e, iid)][-1] == "released"


def test_another_organization_sees_none_of_them(fleet: OneNodeFleet) -> None:
    api = fleet.api
    made = api.post(
        "/api/auth/create-user", {"username": "eve", "email": "eve@example.net", "password": "pw-" * 4}
    )
    assert made.status == 201, made.body
    token = api.post("/api/auth/login", {"username": "eve", "password": "pw-" * 4}, key=False).body["token"]
    eve = Api(api.url, None, headers={"Authorization": f"Bearer {token}"})
    everything = api.get("/api/events?limit=1000").body
    assert any(e["instanceId"] for e in everything)
    seen = eve.get("/api/events?limit=1000").body
    assert all(e["instanceId"] is None and e["kind"] == "node.status" for e in seen), seen
    assert {e["id"] for e in seen} <= {e["id"] for e in everything}
    bad = api.get("/api/events?limit=0")
    assert bad.status == 400 and "limit" in bad.body["error"]


def test_a_webhook_gets_the_events_signed_in_order_after_its_receiver_failed(
    fleet: OneNodeFleet,
) -> None:
    api = fleet.api
    with Receiver(failing=2) as receiver:
        made = api.post("/api/webhooks", {"url": receiver.url, "description": "ops"})
        assert made.status == 201, made.body
        hook, secret = made.body, made.body["secret"]
        assert hook["fleetWide"] and "secret" not in api.get(f"/api/webhooks/{hook['id']}").body
        body = {
            "image": TEST_IMAGE,
            "memory": 16,
            "cpu": 1,
            "ports": [fleet.ports[1]],
            "nodeId": fleet.node_id,
        }
        deployed = api.post("/api/instances/deploy", {**body, "name": "hooked"})
        assert deployed.status == 201, deployed.body
        iid = deployed.body["id"]
        wait_state(api, iid, "running", timeout=15)
        assert api.delete("/api/instance/delete", {"id": iid}).status == 201

        def told() -> list[str]:
            return [r.event["data"]["new"] for r in receiver.accepted() if is_state(r.event, iid)]

        wait_for(lambda: told()[-1:] == ["released"], 20, "the hook to be told it released")
        shown = api.get(f"/api/webhooks/{hook['id']}").body
        assert api.delete(f"/api/webhooks/{hook['id']}").status == 204
    page = api.get(f"/api/events?after={hook['deliveredUpTo']}&limit=1000").body
    # Every event since the hook was made, once each, in order: what the stream shows.
    assert [r.event["id"] for r in receiver.accepted()] == [e["id"] for e in page][: len(receiver.accepted())]
    assert [e["data"]["new"] for e in page if is_state(e, iid)] == told()
    assert [r.status for r in receiver.got[:3]] == [500, 500, 200]
    assert len({r.event["id"] for r in receiver.got[:3]}) == 1  # the first event, retried
    assert all(r.signed_by(secret) for r in receiver.got)
    assert (
        shown["lastError"] == "answered 500" and shown["failures"] == 0 and shown["delivered"] >= len(told())
    )
    assert api.get(f"/api/webhooks/{hook['id']}").status == 404


def test_webhook_input_and_tenancy(fleet: OneNodeFleet) -> None:
    api = fleet.api
    made = api.post(
        "/api/auth/create-user", {"username": "mallory", "email": "mal@example.net", "password": "pw-" * 4}
    )
    assert made.status == 201, made.body
    token = api.post("/api/auth/login", {"username": "mallory", "password": "pw-" * 4}, key=False).body[
        "token"
    ]
    mallory = Api(api.url, None, headers={"Authorization": f"Bearer {token}"})
    for body, field_named in (
        ({"url": "ftp://example.net/in"}, "url"),
        ({"url": "not a url"}, "url"),
        ({}, "url"),
        ({"url": "https://example.net/in", "kinds": ["instance.exploded"]}, "kinds"),
    ):
        refused = api.post("/api/webhooks", body)
        assert refused.status == 400 and field_named in refused.body["error"], (body, refused.body)
    inside = mallory.post("/api/webhooks", {"url": "http://127.0.0.1:9104/metrics"})
    assert inside.status == 400 and "url" in inside.body["error"], inside.body
    hers = mallory.post("/api/webhooks", {"url": "https://hooks.example.net/in", "kinds": ["node.status"]})
    assert hers.status == 201 and not hers.body["fleetWide"] and hers.body["kinds"] == ["node.status"]
    ours = api.post("/api/webhooks", {"url": "https://ops.example.net/in"}).body
    assert [h["id"] for h in mallory.get("/api/webhooks").body] == [hers.body["id"]]
    assert {hers.body["id"], ours["id"]} <= {h["id"] for h in api.get("/api/webhooks").body}
    assert mallory.get(f"/api/webhooks/{ours['id']}").status == 404
    assert mallory.delete(f"/api/webhooks/{ours['id']}").status == 404
    assert api.get("/api/webhooks/no-such-hook").status == 404
    for h in (hers.body["id"], ours["id"]):
        assert api.delete(f"/api/webhooks/{h}").status == 204


def test_placements_refusals_and_crashes_are_events(fleet: OneNodeFleet) -> None:
    api = fleet.api
    start = api.get("/api/events?limit=1000").body
    after = start[-1]["id"] if start else 0
    body = {"image": TEST_IMAGE, "memory": 16, "cpu": 1, "ports": [fleet.ports[0]], "nodeId": fleet.node_id}
    made = api.post("/api/instances/deploy", {**body, "name": "crashes"})
    assert made.status == 201, made.body
    iid = made.body["id"]
    wait_state(api, iid, "running", timeout=15)
    taken = api.post("/api/instances/deploy", {**body, "name": "bounced"})  # the same port
    assert taken.status == 409, taken.body
    engine = docker.from_env()
    try:
        found = inspect_labelled(engine, f"moorage.instance={iid}")
        os.kill(found[0]["State"]["Pid"], signal.SIGKILL)  # its own process dies: a crash
    finally:
        engine.close()

    def kinds() -> list[dict[str, Any]]:
        return [
            e for e in api.get(f"/api/events?after={after}&limit=1000").body if e["kind"] != "node.status"
        ]

    wait_for(lambda: any(e["kind"] == "instance.crashed" for e in kinds()), 15, "the crash to be an event")
    told = kinds()
    placed = next(e for e in told if e["kind"] == "instance.placed")
    assert (
        placed["instanceId"] == iid
        and placed["nodeId"] == fleet.node_id
        and placed["data"]["memoryMib"] == 16
    )
    refused = next(e for e in told if e["kind"] == "placement.refused")
    assert refused["nodeId"] == fleet.node_id and "already assigned" in refused["data"]["reason"]
    assert refused["data"]["field"] == "ports"
    crashed = next(e for e in told if e["kind"] == "instance.crashed")
    assert crashed["instanceId"] == iid and crashed["data"]["exitCode"] == 137, crashed
    assert [e["kind"] for e in told].index("instance.placed") < [e["kind"] for e in told].index(
        "instance.state"
    )
    wait_state(api, iid, "running", timeout=20)  # restarted by its agent
    assert api.delete("/api/instance/delete", {"id": iid}).status == 201
    wait_state(api, iid, "released", timeout=15)


def test_logs_through_the_agent_tail_follow_and_their_bounds(fleet: OneNodeFleet) -> None:
    api = fleet.api
    key = {"x-api-key": fleet.coordinator.admin_key}
    port = fleet.ports[0]
    body = {"image": "busybox-httpd", "memory": 16, "cpu": 1, "ports": [port], "nodeId": fleet.node_id}
    made = api.post("/api/instances/deploy", {**body, "name": "talks"})
    assert made.status == 201, made.body
    iid = made.body["id"]
    wait_state(api, iid, "running", timeout=15)
    for _ in range(5):  # busybox httpd -v writes a line per request
        wait_for(lambda: serves(port), 10, "the instance to serve")
    logs = f"/api/instances/{iid}/logs"
    wait_for(lambda: len(api.get(f"{logs}?tail=1000").body["lines"]) >= 5, 10, "five request lines")
    tail = api.get(f"{logs}?tail=3").body
    assert len(tail["lines"]) == 3 and tail["error"] is None and not tail["truncated"]
    assert tail["lines"] == api.get(f"{logs}?tail=1000").body["lines"][-3:]
    # Following: what the container writes next arrives while the stream is open.
    with following(f"{api.url}{logs}?follow=true&tail=0", key) as got:
        time.sleep(0.5)
        for _ in range(3):
            serves(port)
        wait_for(lambda: len(got) >= 3, 5, "the followed lines")
        # The node's heartbeats go on while it streams.
        assert node_view(api, fleet.node_id)["heartbeatAgeSeconds"] < 2
    time.sleep(1.0)  # the coordinator sees it gone (it looks between writes, every 0.25 s)
    # Four at once per node; a fifth is refused, and leaving gives the places back.
    for _ in range(2):
        stops = [threading.Event() for _ in range(4)]
        said: list[str] = []
        held = [
            threading.Thread(target=sse_lines, args=(f"{api.url}{logs}?follow=true&tail=0", key, said, s))
            for s in stops
        ]
        for t in held:
            t.start()
        time.sleep(1.0)
        fifth = api.get(f"{logs}?tail=1")
        for s in stops:
            s.set()
        for t in held:
            t.join(10)
        assert fifth.status == 429 and "4 logs" in fifth.body["error"], (fifth.body, said)
        time.sleep(1.0)  # the coordinator and the agent see them gone
    assert api.get(f"{logs}?tail=1").status == 200
    bad = api.get(f"{logs}?tail=100000")
    assert bad.status == 400 and "tail" in bad.body["error"]
    assert api.get("/api/instances/no-such/logs").status == 404
    # The CLI says the same (the real CLI, as a subprocess).
    cli = [sys.executable, "-m", "coordinator.cli", "--url", api.url, "--key", fleet.coordinator.admin_key]
    printed = subprocess.run([*cli, "logs", iid, "--tail", "2"], capture_output=True, text=True, timeout=30)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.splitlines() == api.get(f"{logs}?tail=2").body["lines"]
    assert api.delete("/api/instance/delete", {"id": iid}).status == 201
