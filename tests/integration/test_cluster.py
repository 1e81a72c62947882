"""Several coordinators on one PostgreSQL database, as an operator starts them: real processes, the same
cluster key, each its own data directory. What one signs, seals or certifies, the others accept."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from agent.identity import JoinToken
from bench.daemons import (
    COORDINATOR_PORTS,
    TEST_IMAGE,
    AgentProcess,
    Api,
    CoordinatorProcess,
    create_node,
    instance,
    leave_no_containers,
    node_view,
    port_block,
    stop_all,
    wait_for,
    wait_state,
)
from tests.dockerenv import inspect_labelled, require_docker, serves
from tests.streams import following

CLUSTER_KEY = "cluster-key-for-the-tests-0123456789abcdef"


def coordinator(
    tmp: Path,
    name: str,
    database: str,
    key_file: Path | None,
    fleet: dict[str, Any] | None = None,
    sessions: str = "",
) -> CoordinatorProcess:
    """One coordinator of the cluster; ``sessions``: IP:PORT for its agent sessions (enrollment on the
    next port) instead of a port of its own on 127.0.0.1."""
    storage = {"database": database, **({"cluster_key_file": str(key_file)} if key_file else {})}
    extra: dict[str, Any] = {"storage": storage}
    if sessions:
        extra["grpc"] = {"listen": sessions, "public_address": sessions.rpartition(":")[0]}
    return CoordinatorProcess(tmp / name, fleet=fleet, extra=extra)


#: A grace of 5 s (10 heartbeats of 0.5 s): longer than an agent takes to restart, so a node whose agent
#: restarts towards another coordinator is marked by nobody unless someone judges it wrongly.
CLUSTER_FLEET = {"grace_intervals": 10, "offline_after_s": 15.0}


def refused_start(proc: CoordinatorProcess) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coordinator.main", "--config", str(proc.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_second_coordinator_joins_with_the_database_url_and_the_cluster_key(
    tmp_path: Path, database: str
) -> None:
    require_docker()
    key_file = tmp_path / "cluster.key"
    key_file.write_text(CLUSTER_KEY + "\n")
    a = coordinator(tmp_path, "a", database, key_file)
    b = coordinator(tmp_path, "b", database, key_file)
    agent: AgentProcess | None = None
    try:
        a.start()
        b.start()
        admin_a = a.api()
        admin_b = Api(b.endpoints["http"], a.admin_key)  # one admin for the cluster: the first created it
        assert not (b.data_dir / "admin.key").exists()
        for secret in ("ca.key", "sealing.key", "jwt.secret"):
            assert not (a.data_dir / secret).exists() and not (b.data_dir / secret).exists()

        # A token A signed is accepted by B.
        made = admin_a.post(
            "/api/auth/create-user",
            {"username": "kim", "email": "kim@example.com", "password": "correct horse"},
        )
        assert made.status == 201, made.body
        login = admin_a.post("/api/auth/login", {"username": "kim", "password": "correct horse"}, key=False)
        bearer = {"Authorization": f"Bearer {login.body['token']}"}
        assert Api(b.endpoints["http"], None, headers=bearer).get("/api/users").status == 200

        # A node created through B enrolls through A: B's join token pins the CA that A serves.
        node = create_node(admin_b, port_block(2), name="node-cluster")
        agent = AgentProcess(tmp_path / "agent", a, node["joinToken"])
        agent.start()
        wait_for(lambda: node_view(admin_a, node["id"])["isOnline"], 30, "the agent to enroll through A")
    finally:
        stop_all(*(p for p in (agent, a, b) if p is not None))


def test_a_wrong_or_missing_cluster_key_is_a_configuration_error(tmp_path: Path, database: str) -> None:
    key_file = tmp_path / "cluster.key"
    key_file.write_text(CLUSTER_KEY)
    first = coordinator(tmp_path, "a", database, key_file)
    first.start()
    first.stop()
    wrong = tmp_path / "wrong.key"
    wrong.write_text("another-cluster-key-0123456789abcdefghij")
    refused = refused_start(coordinator(tmp_path, "b", database, wrong))
    assert refused.returncode == 78, refused.stderr[-2000:]
    assert "the cluster key does not open the cluster secrets" in refused.stderr
    refused = refused_start(coordinator(tmp_path, "c", database, None))
    assert refused.returncode == 78, refused.stderr[-2000:]
    assert "start every coordinator on it with the cluster key" in refused.stderr
    short = tmp_path / "short.key"
    short.write_text("too short")
    refused = refused_start(coordinator(tmp_path, "d", database, short))
    assert refused.returncode == 78 and "at least 32 characters" in refused.stderr


@dataclass
class Cluster:
    coordinators: list[CoordinatorProcess]
    agent: AgentProcess
    node: dict[str, Any]
    ports: list[int]
    #: One admin for the cluster: the key whichever coordinator bootstrapped the database created.
    admin_key: str

    def api(self, n: int) -> Api:
        return Api(self.coordinators[n].endpoints["http"], self.admin_key)

    def health(self, n: int) -> dict[str, Any]:
        body: dict[str, Any] = self.api(n).get("/api/health").body
        return body


@pytest.fixture
def cluster(tmp_path: Path, database: str) -> Iterator[Cluster]:
    """Three coordinators on one database and one agent that knows all three, enrolled through the first
    (so its session starts there); all of them real processes."""
    require_docker()
    key_file = tmp_path / "cluster.key"
    key_file.write_text(CLUSTER_KEY)
    coordinators = [coordinator(tmp_path, name, database, key_file, CLUSTER_FLEET) for name in "abc"]
    agent: AgentProcess | None = None
    node: dict[str, Any] = {}
    try:
        # Started at the same instant on the empty database: one migrates and bootstraps, all come up.
        for c in coordinators:
            c.launch()
        for c in coordinators:
            c.wait_ready()
        keys = [c.data_dir / "admin.key" for c in coordinators if (c.data_dir / "admin.key").exists()]
        assert len(keys) == 1, keys  # exactly one bootstrapped the database
        admin_key = keys[0].read_text().strip()
        ports = port_block(34)
        node = create_node(Api(coordinators[0].endpoints["http"], admin_key), ports)
        agent = AgentProcess(tmp_path / "agent", coordinators[0], node["joinToken"], also=coordinators[1:])
        agent.start()
        found = Cluster(coordinators, agent, node, ports, admin_key)
        wait_for(lambda: found.health(0)["nodesConnected"] == 1, 30, "the agent's session on the first")
        yield found
        agent = found.agent  # a test may have started it again
    finally:
        stop_all(*(p for p in (agent, *coordinators) if p is not None))
        if node:
            leave_no_containers(node["id"])


def containers(node_id: str) -> dict[str, dict[str, Any]]:
    """The node's containers as the engine has them, by instance id."""
    client = docker.from_env()
    try:
        found = inspect_labelled(client, f"moorage.node={node_id}")
        return {c["Config"]["Labels"]["moorage.instance"]: c for c in found}
    finally:
        client.close()


def reached(node_id: str, iid: str, wanted: Any, within: float, what: str) -> float:
    """Seconds until the instance's container is as ``wanted`` says (a predicate over its engine state,
    None when it has no container)."""
    start = time.monotonic()
    wait_for(lambda: wanted(containers(node_id).get(iid)), within, what, interval=0.02)
    return time.monotonic() - start


def deploy_body(cluster: Cluster, port: int, name: str) -> dict[str, Any]:
    node_id = cluster.node["id"]
    return {
        "image": TEST_IMAGE,
        "memory": "64",
        "cpu": "50",
        "ports": str(cluster.ports[port]),
        "nodeId": node_id,
        "name": name,
    }


def running(attrs: dict[str, Any] | None) -> bool:
    return attrs is not None and bool(attrs["State"]["Running"])


def test_every_coordinator_shows_the_fleet_and_reaches_the_agent_another_holds(cluster: Cluster) -> None:
    node_id = cluster.node["id"]
    # The same fleet view through all three: the session is on the first only.
    assert [cluster.health(n)["nodesConnected"] for n in range(3)] == [1, 0, 0]
    apis = [cluster.api(n) for n in range(3)]
    wait_for(lambda: all(node_view(api, node_id)["isOnline"] for api in apis), 5, "the node online via all")
    # A new node's agentCommand lists every coordinator's session address, the one asked first.
    other = create_node(cluster.api(2), port_block(1), name="node-listed")
    listed = other["agentCommand"].split("--coordinator ", 1)[1].split(" ", 1)[0].strip("'")
    sessions = [f"127.0.0.1:{c.endpoints['grpc_port']}" for c in cluster.coordinators]
    assert listed.split(",")[0] == sessions[2] and sorted(listed.split(",")) == sorted(sessions), listed
    assert JoinToken.parse(other["joinToken"]).coordinators == tuple(listed.split(","))  # the token too
    # Deploy, power, suspend and delete, each through a coordinator that does not hold the session.
    body = {
        "image": TEST_IMAGE,
        "memory": "64",
        "cpu": "50",
        "ports": str(cluster.ports[0]),
        "nodeId": node_id,
    }

    def timed(call: Any, wanted: Any, within: float, what: str) -> float:
        """Seconds from the request through one coordinator to the engine showing its effect."""
        start = time.monotonic()
        answered = call()
        assert answered.status in (200, 201), (what, answered.body)
        reached(node_id, iid, wanted, within, what)
        return time.monotonic() - start

    iid = ""
    took: dict[str, float] = {}
    start = time.monotonic()
    made = cluster.api(1).post("/api/instances/deploy", {**body, "name": "across"})
    assert made.status == 201, made.body
    iid = made.body["id"]
    reached(node_id, iid, running, 5, "the deployed container to run")
    took["deploy"] = time.monotonic() - start
    for n in range(3):
        wait_state(cluster.api(n), iid, "running", timeout=5)
    stopped = lambda a: a is not None and not running(a)  # noqa: E731
    took["kill"] = timed(
        lambda: apis[2].post(f"/api/instances/{iid}/power", {"action": "kill"}), stopped, 5, "kill"
    )
    took["start"] = timed(
        lambda: apis[1].post(f"/api/instances/{iid}/power", {"action": "start"}), running, 5, "start"
    )
    took["suspend"] = timed(lambda: apis[2].post(f"/api/instances/suspend/{iid}"), stopped, 20, "suspend")
    for n in range(3):
        assert instance(cluster.api(n), iid)["suspended"] is True
    took["unsuspend"] = timed(
        lambda: apis[1].post(f"/api/instances/unsuspend/{iid}"), running, 5, "unsuspend"
    )
    took["delete"] = timed(
        lambda: apis[2].delete("/api/instance/delete", {"id": iid}), lambda a: a is None, 20, "delete"
    )
    # Each reached the agent another coordinator holds within a second of the request, engine work included
    # (a create and start, a kill, a start, a stop, a removal).
    assert max(took.values()) < 1.0, took
    for n in range(3):
        wait_state(cluster.api(n), iid, "released", timeout=5)
    # Deleting the node through a coordinator that does not hold its session ends that session: the agent,
    # refused everywhere now, stops with 78.
    gone = cluster.api(1).delete("/api/nodes/delete", {"nodeId": node_id})
    assert gone.status == 201, gone.body
    agent = cluster.agent
    assert agent.proc is not None
    assert agent.proc.wait(timeout=20) == 78, agent.log()
    assert "refused this node" in agent.log()


def test_killing_the_coordinator_holding_the_session_moves_the_agent_and_keeps_its_containers(
    cluster: Cluster,
) -> None:
    node_id = cluster.node["id"]
    made = cluster.api(0).post("/api/instances/deploy", deploy_body(cluster, 1, "survivor"))
    assert made.status == 201, made.body
    iid = made.body["id"]
    wait_state(cluster.api(1), iid, "running", timeout=10)
    before = containers(node_id)[iid]
    alive = [0, 1, 2]
    assert [cluster.health(n)["leader"] for n in alive].count(True) == 1

    def kill(n: int) -> None:
        cluster.coordinators[n].stop(signal.SIGKILL)
        alive.remove(n)

    def leaders() -> list[int]:
        return [n for n in alive if cluster.health(n)["leader"]]

    def unharmed(seconds: float) -> None:
        """Nobody marks the instance unhealthy while its heartbeats arrive somewhere, and every live
        coordinator shows the node online."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for n in alive:
                assert instance(cluster.api(n), iid)["state"] == "running", n
                assert node_view(cluster.api(n), node_id)["isOnline"], n
            time.sleep(0.2)

    # The holder of the session dies: the agent moves on to the next coordinator it knows, within its
    # back-off cap (2 s in the tests).
    kill(0)
    wait_for(lambda: cluster.health(1)["nodesConnected"] == 1, 6, "the agent's session on the second")
    wait_for(lambda: len(leaders()) == 1, 5, "one leader among the living")
    # Watched beyond the grace (5 s) and the time a dead coordinator's sessions take to be nobody's.
    unharmed(8)
    # The leader dies (whichever it is now): another leads within the grace period.
    kill(leaders()[0])
    killed = time.monotonic()
    wait_for(lambda: len(leaders()) == 1, 5, "a new leader")
    assert time.monotonic() - killed < 5.0
    wait_for(lambda: cluster.health(alive[0])["nodesConnected"] == 1, 6, "the agent on the last one")
    unharmed(6)
    after = containers(node_id)[iid]
    assert (after["Id"], after["State"]["StartedAt"]) == (before["Id"], before["State"]["StartedAt"])
    assert after["State"]["Running"]


def test_an_agent_that_moves_to_another_coordinator_is_not_judged_by_the_one_it_left(
    cluster: Cluster,
) -> None:
    """The agent restarts towards the second coordinator while the first lives on: the first must stop
    watching the node (its heartbeats go elsewhere) rather than mark its instances unhealthy."""
    node_id = cluster.node["id"]
    made = cluster.api(0).post("/api/instances/deploy", deploy_body(cluster, 2, "mover"))
    assert made.status == 201, made.body
    iid = made.body["id"]
    wait_state(cluster.api(0), iid, "running", timeout=10)
    cluster.agent.stop()
    a, b, c = cluster.coordinators
    cluster.agent = AgentProcess(cluster.agent.data_dir, b, None, also=[a, c])
    cluster.agent.start()
    wait_for(lambda: cluster.health(1)["nodesConnected"] == 1, 10, "the agent's session on the second")
    assert cluster.health(0)["nodesConnected"] == 0
    deadline = time.monotonic() + 8  # beyond the first's grace (5 s) for the node it held
    while time.monotonic() < deadline:
        for n in range(3):
            assert instance(cluster.api(n), iid)["state"] == "running", n
            assert node_view(cluster.api(n), node_id)["isOnline"], n
        time.sleep(0.25)


def test_a_silent_agent_reads_the_same_through_every_coordinator(cluster: Cluster) -> None:
    """The agent freezes (SIGSTOP): its session stays open, its heartbeats stop. Its holder judges the
    node after the grace and the others show the same within a batch period (its news travel at once, and
    none judges sooner); thawed, it reads online through all three within a heartbeat interval plus the
    batch period."""
    node_id = cluster.node["id"]
    apis = [cluster.api(n) for n in range(3)]
    wait_for(lambda: all(node_view(api, node_id)["isOnline"] for api in apis), 5, "the node online via all")
    proc = cluster.agent.proc
    assert proc is not None

    def first_seen(wanted: Any, within: float) -> list[float]:
        """Seconds, per coordinator, until its view of the node satisfies ``wanted``."""
        start, seen = time.monotonic(), [0.0, 0.0, 0.0]
        while not all(seen) and time.monotonic() - start < within:
            for n in range(3):
                if not seen[n] and wanted(node_view(apis[n], node_id)):
                    seen[n] = time.monotonic() - start
            time.sleep(0.02)
        assert all(seen), seen
        return seen

    os.kill(proc.pid, signal.SIGSTOP)
    try:
        silent = first_seen(lambda v: v["status"] == "heartbeat_abnormal", 12)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    back = first_seen(lambda v: v["isOnline"], 5)
    grace, batch, interval = 5.0, 0.2, 0.5  # CLUSTER_FLEET and the test daemons' fleet
    assert min(silent) >= grace - interval - 0.1, silent  # nobody before the grace
    assert max(silent) - min(silent) <= batch + 0.3, silent  # the same through all three
    assert max(back) <= interval + batch + 0.3, back


def test_a_crash_restart_counts_the_same_through_every_coordinator(cluster: Cluster) -> None:
    """A crash the holder's agent restarted shows as one restart through the other two within the batch
    period (they read what the holder writes), not only through the holder."""
    node_id = cluster.node["id"]
    made = cluster.api(1).post("/api/instances/deploy", deploy_body(cluster, 3, "crashes"))
    assert made.status == 201, made.body
    iid = made.body["id"]
    wait_state(cluster.api(0), iid, "running", timeout=10)
    os.kill(containers(node_id)[iid]["State"]["Pid"], signal.SIGKILL)  # its own process: a crash
    wait_for(lambda: instance(cluster.api(0), iid)["restarts"] == 1, 10, "the holder to count the restart")
    counted = time.monotonic()
    wait_for(
        lambda: all(instance(cluster.api(n), iid)["restarts"] == 1 for n in (1, 2)),
        5,
        "the others to count it",
    )
    assert time.monotonic() - counted < 1.0


def test_what_an_admin_changes_through_one_coordinator_places_through_another_at_once(
    cluster: Cluster,
) -> None:
    """A region created and filled through the first; its limit raised there: the second places by it at
    once (no view of its own older than the change), and the limit holds across both."""
    admin, other = cluster.api(0), cluster.api(1)
    made = admin.post("/api/regions", {"name": "Shared", "identifier": "shared", "serverLimit": 1})
    assert made.status == 201, made.body
    region = made.body["id"]
    moved = admin.call("PATCH", f"/api/nodes/{cluster.node['id']}/region", {"regionId": region})
    assert moved.status == 200, moved.body
    body = {"image": TEST_IMAGE, "memory": "16", "cpu": "1", "regionId": region}
    first = other.post("/api/instances/deploy", {**body, "name": "first"})
    assert first.status == 201, first.body
    full = other.post("/api/instances/deploy", {**body, "name": "over"})
    assert full.status in (409, 503), full.body  # serverLimit 1, reached
    raised = admin.call("PATCH", f"/api/regions/{region}", {"serverLimit": 2})
    assert raised.status == 200, raised.body
    second = other.post("/api/instances/deploy", {**body, "name": "second"})
    assert second.status == 201, second.body
    third = cluster.api(2).post("/api/instances/deploy", {**body, "name": "third"})
    assert third.status in (409, 503), third.body  # and 2 holds through the third
    for made_now in (first, second):
        wait_state(admin, made_now.body["id"], "running", timeout=10)


def test_ninety_deploys_through_three_coordinators_into_thirty_allocations(cluster: Cluster) -> None:
    """90 deploys at once, 30 through each coordinator, for a node whose 30 free allocations are all there
    is: exactly 30 are placed, no allocation twice, and the agent runs them all."""
    node_id = cluster.node["id"]
    for port in cluster.ports[30:]:  # 34 in the block: leave exactly 30
        removed = cluster.api(0).delete(f"/api/nodes/{node_id}/allocations/{allocation_id(cluster, port)}")
        assert removed.status in (200, 204), removed.body
    body = {"image": TEST_IMAGE, "memory": "16", "cpu": "1", "nodeId": node_id}

    def one(n: int) -> int:
        return cluster.api(n % 3).post("/api/instances/deploy", {**body, "name": f"many-{n}"}).status

    with ThreadPoolExecutor(max_workers=30) as pool:
        statuses = list(pool.map(one, range(90)))
    assert statuses.count(201) == 30, sorted(statuses)
    assert all(s in (400, 409, 503) for s in statuses if s != 201), sorted(statuses)
    rows = cluster.coordinators[0].query(
        "SELECT COUNT(*), COUNT(DISTINCT instance_id) FROM allocations WHERE instance_id IS NOT NULL"
    )
    assert rows == [(30, 30)]
    live = cluster.coordinators[0].query("SELECT COUNT(*) FROM instances WHERE released = false")
    assert live == [(30,)]
    wait_for(lambda: sum(running(c) for c in containers(node_id).values()) == 30, 90, "30 containers running")


#: One name with two addresses (tests/env/ensure-test-names.sh puts it in /etc/hosts), as operators give
#: agents a DNS name with an A record per coordinator.
CLUSTER_NAME, CLUSTER_IPS = "coordinators.moorage.test", ("127.0.0.2", "127.0.0.3")


def require_cluster_name() -> None:
    try:
        found = {a[4][0] for a in socket.getaddrinfo(CLUSTER_NAME, 1, socket.AF_INET, socket.SOCK_STREAM)}
    except OSError as exc:
        found, why = set(), str(exc)
    else:
        why = f"it resolves to {sorted(found)}"
    if found >= set(CLUSTER_IPS):
        return
    reason = f"{CLUSTER_NAME} must resolve to {CLUSTER_IPS} (tests/env/ensure-test-names.sh): {why}"
    if os.environ.get("MOORAGE_REQUIRE_DOCKER") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def session_port_on_all(ips: tuple[str, ...]) -> int:
    """A port that is free, with the next one, on every one of ``ips``."""
    for _ in range(50):
        first = port_block(2, *COORDINATOR_PORTS)[0]
        try:
            for ip in ips:
                for port in (first, first + 1):
                    with socket.socket() as probe:
                        probe.bind((ip, port))
        except OSError:
            continue
        return first
    raise RuntimeError(f"no port free on all of {ips}")


def test_an_agent_given_one_name_for_several_coordinators_moves_to_the_next(
    tmp_path: Path, database: str
) -> None:
    """The agent is given one name that resolves to both coordinators' addresses: it enrolls and holds its
    session through the first address, and when that coordinator dies it reaches the other through the
    same name, its container untouched."""
    require_docker()
    require_cluster_name()
    key_file = tmp_path / "cluster.key"
    key_file.write_text(CLUSTER_KEY)
    port = session_port_on_all(CLUSTER_IPS)
    coordinators = [
        coordinator(tmp_path, f"c{n}", database, key_file, CLUSTER_FLEET, f"{ip}:{port}")
        for n, ip in enumerate(CLUSTER_IPS)
    ]
    agent: AgentProcess | None = None
    node: dict[str, Any] = {}
    try:
        coordinators[0].start()
        coordinators[1].start()
        admin_key = (coordinators[0].data_dir / "admin.key").read_text().strip()
        api = [Api(c.endpoints["http"], admin_key) for c in coordinators]

        def connected(n: int) -> int:
            return int(api[n].get("/api/health").body["nodesConnected"])

        node = create_node(api[0], port_block(1), name="by-name")
        named = (f"{CLUSTER_NAME}:{port}", f"{CLUSTER_NAME}:{port + 1}")
        agent = AgentProcess(tmp_path / "agent", coordinators[0], node["joinToken"], addressed=named)
        agent.start()
        wait_for(lambda: connected(0) == 1, 20, "a session on the first")
        body = {"image": TEST_IMAGE, "memory": "16", "cpu": "1", "nodeId": node["id"], "name": "named"}
        made = api[1].post("/api/instances/deploy", body)
        assert made.status == 201, made.body
        iid = made.body["id"]
        wait_state(api[1], iid, "running", timeout=10)
        before = containers(node["id"])[iid]
        coordinators[0].stop(signal.SIGKILL)
        wait_for(lambda: connected(1) == 1, 6, "the session on the second")
        wait_for(lambda: node_view(api[1], node["id"])["isOnline"], 5, "the node online")
        after = containers(node["id"])[iid]
        assert (after["Id"], after["State"]["StartedAt"]) == (before["Id"], before["State"]["StartedAt"])
        assert instance(api[1], iid)["state"] == "running"
    finally:
        stop_all(*(p for p in (agent, *coordinators) if p is not None))
        if node:
            leave_no_containers(node["id"])


def allocation_id(cluster: Cluster, port: int) -> str:
    listed = cluster.api(0).get(f"/api/nodes/{cluster.node['id']}/allocations").body
    return str(next(a["id"] for a in listed if a["port"] == port))


def test_the_bus_comes_back_after_its_database_connection_is_cut(tmp_path: Path, database: str) -> None:
    """The database ends the coordinators' bus connections (a failover, an operator's
    pg_terminate_backend): each coordinator connects again, exactly one leads, and when that one dies the
    other takes over, so the lock is really being tried again."""
    key_file = tmp_path / "cluster.key"
    key_file.write_text(CLUSTER_KEY)
    a, b = (coordinator(tmp_path, name, database, key_file) for name in "ab")
    try:
        a.start()
        b.start()
        admin = (a.data_dir / "admin.key").read_text().strip()
        apis = [Api(c.endpoints["http"], admin) for c in (a, b)]

        def leaders() -> list[bool]:
            return [bool(api.get("/api/health").body["leader"]) for api in apis]

        wait_for(lambda: leaders().count(True) == 1, 10, "one leader")
        cut = a.query(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = 'moorage-coordinator-bus' AND datname = current_database()"
        )
        assert cut == [(2,)]
        wait_for(lambda: leaders().count(True) == 1, 15, "one leader again")
        wait_for(
            lambda: (
                a.query(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'moorage-coordinator-bus'"
                    " AND datname = current_database()"
                )
                == [(2,)]
            ),
            15,
            "both buses back",
        )
        leading = leaders().index(True)
        (a, b)[leading].stop(signal.SIGKILL)
        other = apis[1 - leading]
        wait_for(lambda: other.get("/api/health").body["leader"], 10, "the other to lead")
    finally:
        stop_all(a, b)


def test_logs_read_through_a_coordinator_that_does_not_hold_the_session(cluster: Cluster) -> None:
    """The holder relays the agent's output over the bus: the tail and a followed stream read through the
    other two are what the holder shows."""
    made = cluster.api(1).post(
        "/api/instances/deploy", {**deploy_body(cluster, 4, "talks"), "image": "busybox-httpd"}
    )
    assert made.status == 201, made.body
    iid = made.body["id"]
    wait_state(cluster.api(0), iid, "running", timeout=15)
    port = cluster.ports[4]
    for _ in range(5):  # busybox httpd -v writes a line per request
        wait_for(lambda: serves(port), 10, "the instance to serve")
    logs = f"/api/instances/{iid}/logs"
    wait_for(lambda: len(cluster.api(0).get(f"{logs}?tail=100").body["lines"]) >= 5, 10, "five lines")
    held = cluster.api(0).get(f"{logs}?tail=5").body["lines"]
    relayed = cluster.api(1).get(f"{logs}?tail=5")
    assert relayed.status == 200 and relayed.body["lines"] == held, relayed.body
    url = f"{cluster.coordinators[2].endpoints['http']}{logs}?follow=true&tail=0"
    with following(url, {"x-api-key": cluster.admin_key}) as got:
        time.sleep(0.5)
        for _ in range(3):
            serves(port)
        wait_for(lambda: len(got) >= 3, 5, "the followed lines through the third coordinator")
    assert got[-3:] == cluster.api(0).get(f"{logs}?tail=3").body["lines"]
