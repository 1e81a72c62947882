"""From SQLite to PostgreSQL, as an operator moves: a coordinator that has run real instances is stopped,
its store copied into an empty PostgreSQL database, and started again on it with the same addresses. Its
agent reconnects by itself, its containers stay, and everything it knew (keys, users, instances, the CA)
is there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.daemons import TEST_IMAGE, Api, instance, node_view, one_node_fleet, wait_for, wait_state
from tests.dockerenv import require_docker

pytestmark = pytest.mark.docker

CLUSTER_KEY = "copy-database-cluster-key-0123456789abcdef"


def copy_database(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coordinator.main", "copy-database", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def deploy(api: Api, node_id: str, port: int, name: str) -> str:
    body = {
        "image": TEST_IMAGE,
        "memory": "64",
        "cpu": "50",
        "ports": str(port),
        "nodeId": node_id,
        "name": name,
    }
    made = api.post("/api/instances/deploy", body)
    assert made.status == 201, made.body
    iid: str = made.body["id"]
    return iid


def test_a_store_that_ran_real_instances_moves_to_postgresql(tmp_path: Path, database: str) -> None:
    require_docker()
    with one_node_fleet(tmp_path, ports=3) as fleet:
        api = fleet.api
        first = deploy(api, fleet.node_id, fleet.ports[0], "before-the-move")
        container = wait_state(api, first, "running")["ContainerId"]
        person = {"username": "mover", "email": "mover@example.com", "password": "correct horse"}
        assert api.post("/api/auth/create-user", person).status == 201
        # A region whose fallback was created after it: the copy must not trip over the order.
        first_region = api.post("/api/regions", {"name": "First", "identifier": "first"}).body["id"]
        later_region = api.post("/api/regions", {"name": "Later", "identifier": "later"}).body["id"]
        assert (
            api.call("PATCH", f"/api/regions/{first_region}", {"fallbackRegionId": later_region}).status
            == 200
        )
        coordinator = fleet.coordinator
        assert coordinator.stop() == 0
        source = f"sqlite:///{coordinator.data_dir / 'moorage.db'}"
        key_file = tmp_path / "cluster.key"
        key_file.write_text(CLUSTER_KEY)

        refused = copy_database("--from", source, "--to", f"sqlite:///{tmp_path / 'other.db'}")
        assert refused.returncode == 1 and "must be a PostgreSQL database" in refused.stderr
        copied = copy_database("--from", source, "--to", database, "--cluster-key-file", str(key_file))
        assert copied.returncode == 0, copied.stderr
        assert "instances 1" in copied.stdout and "sealed with the cluster key" in copied.stdout
        again = copy_database("--from", source, "--to", database, "--cluster-key-file", str(key_file))
        assert again.returncode == 1 and "not empty" in again.stderr, again.stderr

        # The same coordinator, same addresses, now on PostgreSQL with the cluster key.
        config = yaml.safe_load(coordinator.config_path.read_text())
        config["storage"] = {"database": database, "cluster_key_file": str(key_file)}
        coordinator.config_path.write_text(yaml.safe_dump(config))
        coordinator.database_url = database
        for secret in ("ca.key", "sealing.key", "jwt.secret"):
            (coordinator.data_dir / secret).unlink()  # they must come from the database now
        coordinator.start()
        assert api.get("/api/health").body["database"] == "postgresql"
        # The agent reconnects on its own: the CA it trusts is the one copied.
        wait_for(lambda: node_view(api, fleet.node_id)["isOnline"], 30, "the agent back on PostgreSQL")
        assert wait_state(api, first, "running")["ContainerId"] == container
        login = api.post("/api/auth/login", {"username": "mover", "password": "correct horse"}, key=False)
        assert login.status == 200, login.body
        # New rows get new keys past the copied ones (sequences were set): a new instance and its number.
        second = deploy(api, fleet.node_id, fleet.ports[1], "after-the-move")
        wait_state(api, second, "running")
        numbers = coordinator.query("SELECT instance_id, number FROM instance_numbers ORDER BY number")
        assert [iid for iid, _ in numbers] == [first, second]
        assert instance(api, first)["name"] == "before-the-move"
        assert api.get(f"/api/regions/{first_region}").body["fallbackRegionId"] == later_region
