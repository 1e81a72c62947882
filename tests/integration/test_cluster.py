"""Several coordinators on one PostgreSQL database, as an operator starts them: real processes, the same
cluster key, each its own data directory. What one signs, seals or certifies, the others accept."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.daemons import (
    AgentProcess,
    Api,
    CoordinatorProcess,
    create_node,
    node_view,
    port_block,
    stop_all,
    wait_for,
)
from bench.databases import drop_database, fresh_database
from tests.databases import require_postgres
from tests.dockerenv import require_docker

CLUSTER_KEY = "cluster-key-for-the-tests-0123456789abcdef"


@pytest.fixture
def database() -> Iterator[str]:
    base = require_postgres()
    url = asyncio.run(fresh_database(base))
    try:
        yield url
    finally:
        asyncio.run(drop_database(base, url))


def coordinator(tmp: Path, name: str, database: str, key_file: Path | None) -> CoordinatorProcess:
    storage = {"database": database, **({"cluster_key_file": str(key_file)} if key_file else {})}
    return CoordinatorProcess(tmp / name, extra={"storage": storage})


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
