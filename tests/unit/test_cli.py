"""The moorage CLI: its pure parts (tables, ages, arguments, errors), then one run against a real
coordinator process, because the CLI is only useful if it agrees with the API it wraps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from coordinator import cli

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0.0, "0.0s"),
        (2.14, "2.1s"),
        (-0.2, "0.0s"),
        (59.94, "59.9s"),
        (59.96, "1m00s"),
        (60, "1m00s"),
        (245.4, "4m05s"),
        (3600, "1h00m"),
        (11_520, "3h12m"),
        (86_400 * 2 + 7 * 3600, "2d07h"),
    ],
)
def test_format_age(seconds: float | None, text: str) -> None:
    assert cli.format_age(seconds) == text


def test_format_table_aligns_columns_without_trailing_blanks() -> None:
    table = cli.format_table(["ID", "NAME", "X"], [["a", "long-name", ""], ["bbbb", "n", "1"]])
    assert table.splitlines() == [
        "ID    NAME       X",
        "a     long-name",
        "bbbb  n          1",
    ]


def test_format_table_with_no_rows_is_the_header() -> None:
    assert cli.format_table(cli.INSTANCE_HEADERS, []) == "ID  NAME  STATE  NODE  PORTS  IMAGE"


def test_node_rows() -> None:
    node = {
        "id": "5d0526d4-653a-4897-b463-929160ee4e60",
        "name": "box1",
        "status": "ready",
        "isOnline": True,
        "heartbeatAgeSeconds": 2.1,
        "allocations": {"total": 10, "assigned": 3, "free": 7},
        "address": "10.0.0.5",
    }
    assert cli.node_rows([node]) == [["5d0526d4", "box1", "ready", "yes", "2.1s", "3/10", "10.0.0.5"]]


def test_instance_rows() -> None:
    inst = {
        "id": "i-1",
        "name": "web",
        "state": "running",
        "nodeId": "5d0526d4-aaaa",
        "ports": [30000, 30001],
    }
    inst["image"] = "busybox-httpd"
    assert cli.instance_rows([inst]) == [
        ["i-1", "web", "running", "5d0526d4", "30000,30001", "busybox-httpd"]
    ]
    released = {**inst, "nodeId": None, "ports": [], "state": "released"}
    assert cli.instance_rows([released])[0][3:5] == ["-", "-"]


def test_error_rendering_uses_the_api_message() -> None:
    body = json.dumps({"error": "nodeId: node x does not exist", "field": "nodeId"}).encode()
    exc = cli.error_from_body(400, body)
    assert (exc.status, exc.field) == (400, "nodeId")
    assert cli.render_error(exc) == "moorage: 400 nodeId: node x does not exist"


def test_error_rendering_without_a_json_body() -> None:
    assert cli.render_error(cli.error_from_body(502, b"<html>Bad Gateway</html>\n")) == (
        "moorage: 502 <html>Bad Gateway</html>"
    )
    assert cli.render_error(cli.error_from_body(503, b"", "Service Unavailable")) == (
        "moorage: 503 Service Unavailable"
    )


def test_global_options_before_or_after_the_command() -> None:
    parser = cli.build_parser()
    before = parser.parse_args(["--url", "http://x:1", "--json", "nodes"])
    after = parser.parse_args(["nodes", "--url", "http://x:1", "--json"])
    plain = parser.parse_args(["nodes"])
    for args in (before, after):
        assert (args.url, args.json, args.command) == ("http://x:1", True, "nodes")
    assert (plain.url, plain.key, plain.json) == (None, None, False)


def test_deploy_arguments() -> None:
    args = cli.build_parser().parse_args(
        [
            *["deploy", "--node", "n1", "--image", "busybox-httpd", "--memory", "64", "--cpu", "50"],
            *["--ports", "30000,30001", "--var", "A=1", "--var", "B=x=y"],
        ]
    )
    assert args.ports == [30000, 30001]
    assert dict(args.var) == {"A": "1", "B": "x=y"}
    assert args.name is None


@pytest.mark.parametrize("argv", [["--var", "NOEQUALS"], ["--ports", "70000"], ["--ports", "a,b"]])
def test_deploy_refuses_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    base = ["deploy", "--node", "n", "--image", "i", "--memory", "1", "--cpu", "1"]
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args([*base, *argv])
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_node_create_arguments() -> None:
    args = cli.build_parser().parse_args(
        ["node", "create", "box", "--ram", "1024", "--disk", "2048", "--cpus", "2", "--address", "h"]
    )
    assert (args.command, args.node_command, args.name, args.port, args.bind, args.ports) == (
        "node",
        "create",
        "box",
        8080,
        "0.0.0.0",
        None,
    )


def test_key_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli.resolve_key(None, {}) is None
    (tmp_path / ".moorage/coordinator").mkdir(parents=True)
    (tmp_path / ".moorage/coordinator/admin.key").write_text("from-file\n")
    assert cli.resolve_key(None, {}) == "from-file"
    assert cli.resolve_key(None, {"MOORAGE_API_KEY": "from-env"}) == "from-env"
    assert cli.resolve_key("given", {"MOORAGE_API_KEY": "from-env"}) == "given"


def test_default_name() -> None:
    assert cli.default_name("busybox-httpd") == "busybox-httpd"
    assert cli.default_name("ghcr.io/pterodactyl/yolks:java_17") == "yolks"
    assert cli.default_name("localhost:5000/a/b@sha256:" + "0" * 64) == "b"


def test_unreachable_coordinator_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(["--url", "http://127.0.0.1:1", "health"]) == cli.EXIT_UNREACHABLE
    assert "cannot reach the coordinator at http://127.0.0.1:1" in capsys.readouterr().err


# ---------------------------------------------------------------- against a real coordinator


@dataclass(frozen=True)
class Running:
    url: str
    key: str


def _clean_env() -> dict[str, str]:
    """No MOORAGE_* from the developer's shell may steer the processes under test."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Running]:
    data = tmp_path / "coord"
    log_path = tmp_path / "coordinator.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                *[sys.executable, "-m", "coordinator.main", "--data-dir", str(data)],
                *["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"],
            ],
            cwd=ROOT,
            env=_clean_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        endpoints = data / "endpoints.json"
        deadline = time.monotonic() + 30
        while not endpoints.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"coordinator did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        url = json.loads(endpoints.read_text())["http"]
        yield Running(url, (data / "admin.key").read_text().strip())
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _cli(running: Running, *argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "--url", running.url, "--key", running.key, *argv],
        cwd=ROOT,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
    )


def _json(running: Running, *argv: str, stdin: str = "") -> Any:
    done = _cli(running, *argv, "--json", stdin=stdin)
    assert done.returncode == 0, (argv, done.stderr)
    return json.loads(done.stdout) if done.stdout.strip() != "null" else None


def test_cli_against_a_real_coordinator(coordinator: Running) -> None:
    created = _cli(
        coordinator,
        *["node", "create", "cli-node", "--ram", "1024", "--disk", "2048", "--cpus", "2"],
        *["--address", "10.0.0.5", "--tags", "eu,ssd", "--ports", "30000-30004"],
    )
    assert created.returncode == 0, created.stderr
    assert "moorage-agent --coordinator" in created.stdout
    assert "MOORAGE2::" in created.stdout

    listed = _cli(coordinator, "nodes", "--json")
    assert listed.returncode == 0, listed.stderr
    nodes = json.loads(listed.stdout)
    assert [(n["name"], n["tags"], n["allocations"]["total"]) for n in nodes] == [
        ("cli-node", ["eu", "ssd"], 5)
    ]

    table = _cli(coordinator, "nodes")
    assert table.stdout.splitlines()[0].split() == [
        *["ID", "NAME", "STATUS", "ONLINE", "HEARTBEAT", "AGE", "ALLOC", "ADDRESS"]
    ]
    assert nodes[0]["id"][:8] in table.stdout

    refused = _cli(coordinator, "instance", "show", "no-such-instance")
    assert refused.returncode == cli.EXIT_API
    assert refused.stderr.startswith("moorage: 400 ")


def test_the_cli_covers_regions_nodes_people_and_keys(coordinator: Running) -> None:
    """Every command against a real coordinator: what it changes is what the API then shows, tables for
    people, --json for scripts; an API refusal exits 1, a usage error 2."""
    region = _json(
        coordinator, "region", "create", "Europe West", "eu-west", "--limit", "2", "--country", "IE"
    )
    assert (region["identifier"], region["serverLimit"], region["countryId"]) == ("eu-west", 2, "IE")
    spare = _json(coordinator, "region", "create", "Spare", "spare")
    changed = _json(coordinator, "region", "update", region["id"], "--limit", "5", "--fallback", spare["id"])
    assert (changed["serverLimit"], changed["fallbackRegionId"]) == (5, spare["id"])
    table = _cli(coordinator, "regions")
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:4] == [
        "ID",
        "IDENTIFIER",
        "NAME",
        "SERVERS",
    ]
    assert "0/5 [..........]" in table.stdout and "Spare" in table.stdout  # used/limit, bar, fallback
    cleared = _json(coordinator, "region", "update", region["id"], "--no-fallback")
    assert cleared["fallbackRegionId"] is None

    node = _json(
        coordinator,
        *["node", "create", "regional", "--ram", "1024", "--disk", "2048", "--cpus", "2"],
        *["--address", "10.0.0.6", "--ports", "31000-31001", "--region", region["id"]],
    )
    token = _json(coordinator, "node", "join-token", node["id"])
    assert token["joinToken"].startswith("MOORAGE2::") and token["joinToken"] != node["joinToken"]
    assert _json(coordinator, "node", "maintenance", node["id"], "on")["maintenance"] is True
    assert _json(coordinator, "node", "maintenance", node["id"], "off")["maintenance"] is False
    _json(coordinator, "node", "allocation-add", node["id"], "31010-31012")
    listed = _json(coordinator, "node", "allocations", node["id"])
    assert sorted(a["port"] for a in listed) == [31000, 31001, 31010, 31011, 31012]
    last = next(a for a in listed if a["port"] == 31012)
    assert _cli(coordinator, "node", "allocation-remove", node["id"], last["id"]).returncode == 0
    assert len(_json(coordinator, "node", "allocations", node["id"])) == 4
    # A region holding a node is not deleted: the API's refusal, exit 1.
    refused = _cli(coordinator, "region", "delete", region["id"])
    assert refused.returncode == cli.EXIT_API and refused.stderr.startswith("moorage: 4")
    assert _cli(coordinator, "node", "delete", node["id"]).returncode == 0
    assert _cli(coordinator, "region", "delete", region["id"]).returncode == 0
    assert region["id"] not in {r["id"] for r in _json(coordinator, "regions")}

    user = _json(
        coordinator, "user", "create", "ops-two", "ops2@example.net", stdin="correct horse battery\n"
    )
    assert user["username"] == "ops-two" and user["admin"] is False
    assert "ops-two" in _cli(coordinator, "users").stdout
    key = _json(coordinator, "key", "create", "ci")
    assert key["key"].startswith("mrg_")
    assert key["id"] in {k["id"] for k in _json(coordinator, "keys")}
    assert _cli(coordinator, "key", "revoke", key["id"]).returncode == 0
    revoked = next(k for k in _json(coordinator, "keys") if k["id"] == key["id"])
    assert revoked["revokedAt"] is not None

    # Instance commands reach the API (no agent here: the instance does not exist) and report its refusal.
    for argv in (["instance", "power", "no-such", "start"], ["instance", "suspend", "no-such"]):
        gone = _cli(coordinator, *argv)
        assert gone.returncode == cli.EXIT_API and gone.stderr.startswith("moorage: 4"), (argv, gone.stderr)
    # Usage errors: argparse's exit 2, before any request.
    for argv in (["node", "maintenance", node["id"], "sideways"], ["instance", "power", "x", "explode"]):
        assert _cli(coordinator, *argv).returncode == cli.EXIT_USAGE


def test_the_cli_shows_and_follows_events_and_manages_webhooks(coordinator: Running) -> None:
    node = _json(
        coordinator,
        *["node", "create", "evented", "--ram", "1024", "--disk", "2048", "--cpus", "2"],
        *["--address", "10.0.0.7", "--ports", "32000"],
    )
    follower = subprocess.Popen(
        [
            *[sys.executable, "-m", "coordinator.cli", "--url", coordinator.url, "--key", coordinator.key],
            *["events", "-f", "--json"],
        ],
        cwd=ROOT,
        env=_clean_env(),
        stdout=subprocess.PIPE,
        text=True,
        # As at a terminal: a shell's background job (how CI may run) starts with SIGINT ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        time.sleep(1.0)  # connected (a follower starts from now)
        deploy = ["deploy", "--node", node["id"], "--image", "moorage-test/busybox:latest"]
        made = _json(coordinator, *deploy, "--memory", "16", "--cpu", "5", "--ports", "32000")
        again = _cli(coordinator, *deploy, "--memory", "16", "--cpu", "5", "--ports", "32000")
        assert again.returncode == cli.EXIT_API and "already assigned" in again.stderr
        assert follower.stdout is not None
        told = [json.loads(follower.stdout.readline()) for _ in range(2)]  # blocks: the timeout guards it
    finally:
        follower.send_signal(signal.SIGINT)  # Ctrl-C ends following, exit 0
        try:
            assert follower.wait(timeout=10) == 0
        finally:
            follower.kill()
            follower.wait()
            if follower.stdout is not None:
                follower.stdout.close()
    assert [(e["kind"], e["instanceId"]) for e in told] == [
        ("instance.placed", made["id"]),
        ("placement.refused", None),
    ]
    table = _cli(coordinator, "events", "--limit", "2")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["ID", "AT", "KIND", "ABOUT", "WHAT"] and len(lines) == 3
    assert "instance.placed" in lines[1] and "refused: ports: 32000 already assigned" in lines[2]
    assert [e["id"] for e in _json(coordinator, "events", "--after", str(told[0]["id"]))] == [told[1]["id"]]

    hook = _json(coordinator, "webhook", "create", "https://hooks.example.net/in", "--kinds", "node.status")
    assert hook["secret"].startswith("whsec_") and hook["kinds"] == ["node.status"]
    assert "secret (shown once" in _cli(coordinator, "webhook", "create", "https://b.example.net/").stdout
    listed = _cli(coordinator, "webhooks")
    assert listed.stdout.splitlines()[0].split()[:3] == ["ID", "URL", "KINDS"] and hook["id"] in listed.stdout
    assert _cli(coordinator, "webhook", "delete", hook["id"]).returncode == 0
    assert hook["id"] not in {h["id"] for h in _json(coordinator, "webhooks")}
    bad = _cli(coordinator, "webhook", "create", "ftp://example.net/")
    assert bad.returncode == cli.EXIT_API and "url" in bad.stderr
