"""Real daemons for tests: the coordinator and the agent as subprocesses on free ports with temporary data
directories, and a small synchronous HTTP client for the coordinator's API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import text

from coordinator.store.engine import Store

REPO = Path(__file__).resolve().parent.parent
CATALOG = REPO / "config" / "images.yaml"
SIZES = REPO / "config" / "sizes.yaml"
TEST_IMAGE = "moorage-test/busybox:latest"  # built by tests/env/build-test-image.sh

#: Fast clocks for tests: heartbeats every 0.5 s, abnormal after 1.5 s.
TEST_FLEET = {
    "heartbeat_interval_s": 0.5,
    "grace_intervals": 3,
    "offline_after_s": 4.0,
    "batch_period_s": 0.2,
    "command_wait_s": 15.0,
}


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll until ``predicate`` returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


#: Ports handed out by port_block in this process: free until their daemon binds them, but taken.
_HANDED_OUT: set[int] = set()


def port_block(count: int, start: int = 10000, end: int = 20000) -> list[int]:
    """``count`` consecutive ports free on 127.0.0.1 for TCP and UDP, from a randomised start, never
    handed out before in this process. Below Linux's ephemeral range (32768-60999) by default: a port
    found free there can be taken by any outgoing connection before the container publishes it."""
    base = start + (os.getpid() * 37 + int(time.time() * 1000)) % (end - start - count)
    for offset in range(0, end - start, count):
        first = start + (base - start + offset) % (end - start - count)
        block = range(first, first + count)
        if not _HANDED_OUT.intersection(block) and all(_free(p) for p in block):
            _HANDED_OUT.update(block)
            return list(block)
    raise RuntimeError("no block of free ports")


#: Where coordinators listen in tests: below Linux's ephemeral range (32768-60999), so no outgoing
#: connection can take a port while its coordinator is down for a restart (allocations use 10000-20000).
COORDINATOR_PORTS = (20000, 30000)


def _free(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


#: Every response body the suite received, and every data directory a daemon used: the secret scan at the
#: end of the session (tests/conftest.py) reads both.
RESPONSES: list[str] = []
DATA_DIRS: list[Path] = []


@dataclass
class Response:
    status: int
    body: Any
    headers: dict[str, str]


@dataclass
class Api:
    url: str
    key: str | None
    #: Sent with every call (e.g. an Authorization header with a JWT).
    headers: dict[str, str] = field(default_factory=dict)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | bool | None = True,
        headers: dict[str, str] | None = None,
    ) -> Response:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        use_key = self.key if key is True else (key or None)
        if use_key:
            req.add_header("x-api-key", str(use_key))
        for name, value in {**self.headers, **(headers or {})}.items():
            req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                raw = resp.read()
                status, hdrs = resp.status, dict(resp.headers)
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            status, hdrs = exc.code, dict(exc.headers)
            exc.close()
        RESPONSES.append(raw.decode(errors="replace"))
        return Response(status, json.loads(raw) if raw else None, hdrs)

    def get(self, path: str, **kw: Any) -> Response:
        return self.call("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Response:
        return self.call("POST", path, body if body is not None else {}, **kw)

    def delete(self, path: str, body: Any = None, **kw: Any) -> Response:
        return self.call("DELETE", path, body, **kw)


def write_config(data_dir: Path, config: dict[str, Any]) -> Path:
    """Create the data directory, register it for the secret scan, and write the daemon's YAML beside it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    DATA_DIRS.append(data_dir)
    path = data_dir.parent / f"{data_dir.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class Process:
    argv: list[str]
    log_dir: Path
    name: str
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.log_dir / f"{self.name}.out", "ab")  # noqa: SIM115 - the child owns it
        err = open(self.log_dir / f"{self.name}.err", "ab")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                cwd=REPO,
            )
        finally:
            out.close()
            err.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def log(self, tail: int = 4000) -> str:
        """The last ``tail`` characters of its stderr (where its logs go)."""
        path = self.log_dir / f"{self.name}.err"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""


class CoordinatorProcess(Process):
    def __init__(
        self, data_dir: Path, fleet: dict[str, Any] | None = None, extra: dict[str, Any] | None = None
    ) -> None:
        self.data_dir = data_dir
        # Fixed, pre-picked ports (HTTP, agent sessions, enrollment = sessions + 1), as an operator's: a
        # restart comes back on the same addresses and the agents reconnect on their own.
        self.http_port, self.grpc_port, _ = port_block(3, *COORDINATOR_PORTS)
        config = {
            "data_dir": str(data_dir),
            "log_json": True,
            "http": {"listen": f"127.0.0.1:{self.http_port}"},
            "grpc": {"listen": f"127.0.0.1:{self.grpc_port}", "public_address": "127.0.0.1"},
            "fleet": {**TEST_FLEET, **(fleet or {})},
            "catalog": {"images": str(CATALOG), "sizes": str(SIZES)},
            **(extra or {}),
        }
        self.config_path = write_config(data_dir, config)
        #: Where its store is: the configured database, or SQLite in its data directory.
        self.database_url: str = (
            config.get("storage", {}).get("database") or f"sqlite:///{data_dir / 'moorage.db'}"
        )
        super().__init__(
            [sys.executable, "-m", "coordinator.main", "--config", str(self.config_path)],
            data_dir.parent,
            data_dir.name,
        )
        self.endpoints: dict[str, Any] = {}

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the process without waiting for it (several may then start at the same instant)."""
        super().start()

    def wait_ready(self) -> None:
        assert self.proc is not None
        pid = self.proc.pid

        def ready() -> dict[str, Any] | None:
            if not self.running:
                raise AssertionError(f"coordinator exited early:\n{self.log()}")
            try:
                found: dict[str, Any] = json.loads((self.data_dir / "endpoints.json").read_text())
            except (OSError, ValueError):
                return None
            return found if found.get("pid") == pid else None

        self.endpoints = wait_for(ready, 30, "the coordinator to start")

    def query(self, statement: str, **params: Any) -> list[tuple[Any, ...]]:
        """Rows of a read-only SQL statement (``:name`` parameters) on its store, whichever database that
        is (read as the store reads, not by opening a file behind its back)."""

        async def read() -> list[tuple[Any, ...]]:
            store = Store.open(self.database_url)
            try:
                async with store.read() as conn:
                    return [tuple(r) for r in (await conn.execute(text(statement), params)).all()]
            finally:
                await store.close()

        return asyncio.run(read())

    @property
    def admin_key(self) -> str:
        return (self.data_dir / "admin.key").read_text().strip()

    def api(self) -> Api:
        return Api(self.endpoints["http"], self.admin_key)


class AgentProcess(Process):
    def __init__(
        self,
        data_dir: Path,
        coordinator: CoordinatorProcess,
        join_token: str | None,
        also: Sequence[CoordinatorProcess] = (),
        addressed: bool | tuple[str, str] = True,
        **options: Any,
    ) -> None:
        """Enrolls through ``coordinator``; its sessions go there first, then to those ``also`` names. Not
        ``addressed``: given no addresses, it goes where its join token or data directory says; a pair:
        these (session, enrollment) addresses instead."""
        self.data_dir = data_dir
        sessions = ",".join(f"127.0.0.1:{c.endpoints['grpc_port']}" for c in (coordinator, *also))
        enroll = f"127.0.0.1:{coordinator.endpoints['enroll_port']}"
        if not addressed:
            sessions = enroll = ""
        elif isinstance(addressed, tuple):
            sessions, enroll = addressed
        config = {
            "data_dir": str(data_dir),
            "coordinator": sessions,
            "enroll_address": enroll,
            "reconnect_initial_s": 0.2,
            "reconnect_max_s": 2.0,
            "metrics_listen": "",  # several agents at once on one host: a test that reads them asks
            **options,
        }
        if join_token:
            config["join_token"] = join_token
        self.config_path = write_config(data_dir, config)
        super().__init__(
            [sys.executable, "-m", "agent.main", "--config", str(self.config_path)],
            data_dir.parent,
            data_dir.name,
        )


def agent_figures(metrics_port: int) -> dict[str, float]:
    """An agent's unlabelled series on its /metrics (served on ``metrics_listen``), by name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
        lines = resp.read().decode().splitlines()
    return {
        name: float(value)
        for name, _, value in (line.partition(" ") for line in lines)
        if name and not name.startswith("#") and "{" not in name
    }


@contextlib.contextmanager
def running_coordinator(data_dir: Path, **kwargs: Any) -> Iterator[CoordinatorProcess]:
    proc = CoordinatorProcess(data_dir, **kwargs)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


class FakeAgents(Process):
    """Real agent code over an in-memory runtime, several agents in one process (bench/fakeagent.py)."""

    def __init__(self, log_dir: Path, coordinator: CoordinatorProcess, tokens: list[str]) -> None:
        specs = []
        for n, token in enumerate(tokens):
            data_dir = log_dir / f"fake-agent-{n}"
            data_dir.mkdir(parents=True, exist_ok=True)
            DATA_DIRS.append(data_dir)
            specs.append(
                {
                    "data_dir": str(data_dir),
                    "coordinator": f"127.0.0.1:{coordinator.endpoints['grpc_port']}",
                    "enroll_address": f"127.0.0.1:{coordinator.endpoints['enroll_port']}",
                    "join_token": token,
                    "log_level": "warning",
                }
            )
        log_dir.mkdir(parents=True, exist_ok=True)
        spec_path = log_dir / "fake-agents.json"
        spec_path.write_text(json.dumps(specs))
        super().__init__([sys.executable, "-m", "bench.fakeagent", str(spec_path)], log_dir, "fake-agents")


def create_node(api: Api, ports: list[int], **overrides: Any) -> dict[str, Any]:
    body = {
        "name": overrides.pop("name", "node-a"),
        "tags": "test",
        "ram": 4096,
        "disk": 20000,
        "processor": 2,
        "address": "127.0.0.1",
        "port": 8080,
        "allocations": {"bindAddress": "127.0.0.1", "ports": f"{ports[0]}-{ports[-1]}"},
        **overrides,
    }
    r = api.post("/api/nodes/create", body)
    assert r.status == 201, r.body
    node: dict[str, Any] = r.body
    return node


def node_view(api: Api, node_id: str) -> dict[str, Any]:
    r = api.get("/api/nodes")
    assert r.status == 200, r.body
    found: dict[str, Any] = next(n for n in r.body if n["id"] == node_id)
    return found


def instance(api: Api, instance_id: str) -> dict[str, Any]:
    r = api.post("/api/getInstance", {"id": instance_id})
    assert r.status == 200, r.body
    found: dict[str, Any] = r.body
    return found


def wait_state(
    api: Api, instance_id: str, state: str, timeout: float = 30, interval: float = 0.1
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        inst = instance(api, instance_id)
        return inst if inst["state"] == state else None

    found: dict[str, Any] = wait_for(check, timeout, f"instance {instance_id} to be {state}", interval)
    return found


def stop_all(*procs: Process) -> None:
    for p in procs:
        p.stop()


def leave_no_containers(node_id: str) -> None:
    """Remove every container a test's node left behind (a failed test must not leak into the next)."""
    import docker

    client = docker.from_env()
    try:
        for c in client.containers.list(all=True, filters={"label": f"moorage.node={node_id}"}):
            c.remove(force=True)
    finally:
        client.close()


@dataclass
class OneNodeFleet:
    """A coordinator and one enrolled agent on this host's Docker, as real subprocesses."""

    coordinator: CoordinatorProcess
    agent: AgentProcess
    node: dict[str, Any]
    ports: list[int]
    tmp: Path

    @property
    def api(self) -> Api:
        return self.coordinator.api()

    @property
    def node_id(self) -> str:
        return str(self.node["id"])

    def deploy(self, port: int, name: str, image: str = TEST_IMAGE, memory: int = 64) -> dict[str, Any]:
        """An instance on the node with ``port`` as its primary allocation: the deploy's answer (201)."""
        body = {
            "image": image,
            "memory": memory,
            "cpu": 10,
            "ports": [port],
            "nodeId": self.node_id,
            "name": name,
        }
        r = self.api.post("/api/instances/deploy", body)
        assert r.status == 201, r.body
        found: dict[str, Any] = r.body
        return found


@contextlib.contextmanager
def one_node_fleet(
    tmp: Path, ports: int, coordinator_options: dict[str, Any] | None = None, **agent_options: Any
) -> Iterator[OneNodeFleet]:
    """Up and online before the body runs; both daemons stopped and the node's containers removed after.
    ``coordinator_options``: top-level sections of the coordinator's config to set."""
    coordinator = CoordinatorProcess(tmp / "coordinator", extra=coordinator_options)
    coordinator.start()
    block = port_block(ports)
    node = create_node(coordinator.api(), block)
    agent = AgentProcess(tmp / "agent", coordinator, str(node["joinToken"]), **agent_options)
    agent.start()
    fleet = OneNodeFleet(coordinator, agent, node, block, tmp)
    try:
        wait_for(lambda: node_view(fleet.api, fleet.node_id)["isOnline"], 20, "the node to come online")
        yield fleet
    finally:
        fleet.agent.stop()
        fleet.coordinator.stop()
        leave_no_containers(fleet.node_id)
