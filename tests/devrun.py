"""`make run`: a coordinator on SQLite in ./.moorage and an agent on this host's Docker, enrolled to it.

Both run as child processes of this one, exactly as an operator would start them, so the demo exercises the
real enrollment and mutual-TLS session. A second run reuses the agent's identity (no new node). Ctrl-C stops
both daemons; containers keep running and the agent re-adopts them on the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from coordinator.cli import ApiError, Client, Unreachable

CONFIG = Path(__file__).resolve().parents[1] / "config" / "coordinator.yaml"
STOP_WAIT_S = 15.0
T = TypeVar("T")
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class ChildDied(Exception):
    def __init__(self, child: Child) -> None:
        super().__init__(child.name)
        self.child = child


def interrupt(_signum: int, _frame: FrameType | None) -> None:
    """SIGTERM and SIGHUP end the demo the way Ctrl-C does: both children stopped, exit 0."""
    raise KeyboardInterrupt


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise ChildDied(self)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not finished within STOP_WAIT_S."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            print(f"{self.name} did not stop within {STOP_WAIT_S:.0f} s; killing it", file=sys.stderr)
            self.proc.kill()
            self.proc.wait()


def start(name: str, args: list[str], data: Path) -> Child:
    """Own session, so a Ctrl-C reaches only this process, which then stops the children in order."""
    log = data / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"{name}.main", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Child(name, proc, log)


def wait_for(what: str, probe: Callable[[], T | None], children: list[Child], timeout_s: float = 90.0) -> T:
    """Poll until ``probe`` gives a value, failing fast when a child dies on the way."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in children:
            child.check()
        value = probe()
        if value is not None:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def read_endpoints(path: Path, pid: int) -> dict[str, Any] | None:
    """The coordinator's endpoints.json, once this run's coordinator (not a stale one) has written it."""
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("pid") == pid else None


def answers(client: Client, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    try:
        return client.call(method, path, body)
    except (ApiError, Unreachable):
        return None


def agent_arguments(client: Client, endpoints: dict[str, Any], data: Path) -> tuple[str, list[str]]:
    """(node id, agent flags): the stored identity when the agent has one, else a new node to enroll."""
    agent_dir = data / "agent"
    args = ["--coordinator", f"127.0.0.1:{endpoints['grpc_port']}", "--data-dir", str(agent_dir)]
    if (agent_dir / "node.json").exists():
        node_id: str = json.loads((agent_dir / "node.json").read_text())["node_id"]
        if not any(n["id"] == node_id for n in client.call("GET", "/api/nodes")):
            raise SystemExit(f"{agent_dir} belongs to node {node_id}, unknown here; remove {data} to restart")
        return node_id, args
    body = {
        "name": socket.gethostname(),
        "tags": ["dev"],
        "ram": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20,
        "disk": shutil.disk_usage(data).total // 2**20,
        "processor": os.cpu_count() or 1,
        "address": "127.0.0.1",
        "port": 8080,
        "allocations": {"bindAddress": "127.0.0.1", "ports": "30000-30019"},
    }
    node = client.call("POST", "/api/nodes/create", body)
    enroll = f"127.0.0.1:{endpoints['enroll_port']}"
    return node["id"], [*args, "--enroll-address", enroll, "--join-token", node["joinToken"]]


def run(http: str, grpc: str) -> None:
    data = Path.cwd() / ".moorage"
    for d in (data / "coordinator", data / "agent"):
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
    for sig in SIGNALS:
        signal.signal(sig, interrupt)
    children: list[Child] = []
    try:
        coord_dir = data / "coordinator"
        coord_args = ["--config", str(CONFIG), "--data-dir", str(coord_dir), "--http", http, "--grpc", grpc]
        coord = start("coordinator", coord_args, data)
        children.append(coord)
        endpoints = wait_for(
            "the coordinator's endpoints.json",
            lambda: read_endpoints(coord_dir / "endpoints.json", coord.proc.pid),
            children,
        )
        url, key = endpoints["http"], (coord_dir / "admin.key").read_text().strip()
        client = Client(url, key, timeout_s=10)
        wait_for("GET /api/health", lambda: answers(client, "GET", "/api/health"), children)
        node_id, agent_args = agent_arguments(client, endpoints, data)
        children.append(start("agent", agent_args, data))

        def online() -> bool | None:
            # isOnline alone is not enough: after a quick restart it reflects the stored last heartbeat.
            nodes = answers(client, "GET", "/api/nodes") or []
            live = any(n["id"] == node_id and n["isOnline"] and n["connected"] for n in nodes)
            return True if live else None

        wait_for(f"node {node_id} to come online", online, children)
        print(banner(url, key, node_id, data), flush=True)
        while True:
            for child in children:
                child.check()
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping the agent and the coordinator (containers keep running) ...", flush=True)
    except ChildDied as exc:
        c = exc.child
        print(f"\n{c.name} exited ({c.proc.returncode}); end of {c.log}:\n{c.tail()}", file=sys.stderr)
        raise SystemExit(1) from None
    except (TimeoutError, ApiError, Unreachable) as exc:
        print(f"devrun: {exc}", file=sys.stderr)
        for child in children:
            print(f"--- last lines of {child.log}:\n{child.tail()}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        for sig in SIGNALS:  # a second Ctrl-C must not abandon a child half-stopped
            signal.signal(sig, signal.SIG_IGN)
        for child in reversed(children):  # the agent first: it would only retry a vanished coordinator
            child.stop()


def banner(url: str, key: str, node_id: str, data: Path) -> str:
    def curl(path: str, body: dict[str, Any]) -> str:
        return (
            f"curl -s -X POST {url}{path} -H 'x-api-key: {key}' -H 'content-type: application/json' "
            f"-d {shlex.quote(json.dumps(body, separators=(',', ':')))}"
        )

    deploy = {"name": "hello", "image": "busybox-httpd", "nodeId": node_id, "memory": 64, "cpu": 50}
    return f"""
Moorage is running: a coordinator (SQLite in {data}/coordinator) and an agent on this host's Docker.
  API        {url}
  admin key  {key}
  node       {node_id}
  logs       {data}/coordinator.log, {data}/agent.log

Deploy busybox httpd on the node (it gets the first free port of 30000-30019):
  {curl("/api/instances/deploy", deploy)}
Show it (put the "id" from the deploy's answer in place of INSTANCE_ID), then curl 127.0.0.1:<port>:
  {curl("/api/getInstance", {"id": "INSTANCE_ID"})}
Or: .venv/bin/moorage instances

Ctrl-C stops both daemons; containers keep running and the agent re-adopts them on the next `make run`."""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="devrun", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--http", default=os.environ.get("MOORAGE_HTTP") or "127.0.0.1:8080", help="HOST:PORT")
    p.add_argument("--grpc", default=os.environ.get("MOORAGE_GRPC") or "127.0.0.1:7443", help="HOST:PORT")
    args = p.parse_args(argv)
    run(args.http, args.grpc)


if __name__ == "__main__":
    main()
