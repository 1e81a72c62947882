"""Schemathesis over the whole OpenAPI document, every check it has, against a real coordinator with a
node (real agent code over the in-memory runtime): once as the admin and once as a user of another
organization. A bounded number of examples keeps it around a minute; the deliberate deviations live in
schemathesis.toml with their reasons. New routes are fuzzed because the run walks the document."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.daemons import REPO, Api, CoordinatorProcess, FakeAgents, create_node, port_block, wait_for

#: Examples per operation and phase: enough to walk every operation's shapes, bounded for CI.
MAX_EXAMPLES = 12
SEED = 20261201


@dataclass
class Target:
    coordinator: CoordinatorProcess
    other_key: str

    @property
    def url(self) -> str:
        return str(self.coordinator.endpoints["http"])


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    tmp = tmp_path_factory.mktemp("fuzz")
    coordinator = CoordinatorProcess(
        tmp / "coordinator", extra={"auth": {"failed_attempts": 1_000_000}, "log_level": "warning"}
    )
    coordinator.start()
    agents: FakeAgents | None = None
    try:
        api = coordinator.api()
        region = api.post("/api/regions", {"name": "Fuzz", "identifier": "fuzz", "countryId": "DE"}).body
        node = create_node(api, port_block(20), name="fuzz-node", regionId=region["id"])
        agents = FakeAgents(tmp / "agents", coordinator, [node["joinToken"]])
        agents.start()
        wait_for(lambda: api.get("/api/nodes").body[0]["isOnline"], 30, "the fuzz node online")
        user = {"username": "mallory", "email": "mallory@example.com", "password": "mallory-pass"}
        assert api.post("/api/auth/create-user", user).status == 201
        token = api.post("/api/auth/login", {"username": "mallory", "password": "mallory-pass"}, key=False)
        mallory = Api(api.url, None, headers={"Authorization": f"Bearer {token.body['token']}"})
        key = mallory.post("/api/keys", {"name": "fuzz"}).body["key"]
        yield Target(coordinator, key)
    finally:
        if agents is not None:
            agents.stop()
        coordinator.stop()


def fuzz(target: Target, key: str, report: Path) -> subprocess.CompletedProcess[str]:
    cli = Path(sys.executable).with_name("schemathesis")
    return subprocess.run(
        [
            str(cli),
            "--no-color",
            "--config-file",
            str(REPO / "schemathesis.toml"),
            "run",
            f"{target.url}/api/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            str(SEED),
            "--header",
            f"x-api-key: {key}",
            "--report",
            "junit",
            "--report-dir",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
        env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false"},
    )


def summary(run: subprocess.CompletedProcess[str]) -> str:
    out = run.stdout + run.stderr
    start = out.find("SUMMARY")
    return out[start - 40 :] if start >= 0 else out[-6000:]


@pytest.mark.parametrize("who", ["admin", "another-organization"])
def test_the_fuzzer_finds_nothing(target: Target, who: str, tmp_path: Path) -> None:
    key = target.coordinator.admin_key if who == "admin" else target.other_key
    run = fuzz(target, key, tmp_path / "report")
    failures = re.findall(r"^\s*\d+\. Test Case ID: \w+", run.stdout, re.MULTILINE)
    tested = re.search(r"Tested: (\d+)", run.stdout)
    generated = re.search(r"(\d+) generated", run.stdout)
    print(json.dumps({"who": who, "operations": tested and tested.group(1), "generated": generated and
                      generated.group(1), "failures": len(failures)}))  # fmt: skip
    assert run.returncode == 0, f"schemathesis as {who} failed:\n{run.stdout[-20000:]}\n{summary(run)}"
