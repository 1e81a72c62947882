"""The agent's Prometheus metrics, scraped from a real agent beside a real coordinator and Docker: what an
operator graphs. Both daemons' expositions pass `promtool check metrics` (Debian's prometheus package,
installed by make test-env)."""

from __future__ import annotations

import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.daemons import TEST_IMAGE, OneNodeFleet, one_node_fleet, wait_for, wait_state
from tests.dockerenv import free_port, require_docker, require_tool


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OneNodeFleet, str]]:
    require_docker()
    port = free_port()
    with one_node_fleet(tmp_path_factory.mktemp("metrics"), 2, metrics_listen=f"127.0.0.1:{port}") as f:
        yield f, f"http://127.0.0.1:{port}/metrics"


def scrape(url: str, key: str | None = None) -> str:
    request = urllib.request.Request(url)
    if key:
        request.add_header("x-api-key", key)
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text: str = response.read().decode()
    return text


def value(text: str, series: str) -> float:
    """The sample of ``series`` (name with its labels, as exposed); 0 when absent."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def promtool_check(text: str, tmp: Path) -> None:
    promtool = require_tool("promtool")
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


#: glibc reserves each arena for threads other than the main one as a heap of this size, aligned to it.
THREAD_HEAP = 64 << 20


def thread_arenas(pid: int) -> int:
    """glibc's arenas besides the main one in the process: each a 64 MiB-aligned reservation, the part in
    use read-write and the rest inaccessible, ending together 64 MiB on."""
    spans: list[tuple[int, int, str, bool]] = []
    with open(f"/proc/{pid}/maps", encoding="ascii") as maps:
        for line in maps:
            fields = line.split()
            low, _, high = fields[0].partition("-")
            spans.append((int(low, 16), int(high, 16), fields[1], len(fields) > 5))
    count = 0
    for i, (start, end, perms, named) in enumerate(spans):
        if named or perms != "rw-p" or start % THREAD_HEAP:
            continue
        rest = spans[i + 1] if i + 1 < len(spans) else None
        whole = end - start == THREAD_HEAP
        reserved = (
            rest is not None and rest[0] == end and rest[2] == "---p" and rest[1] == start + THREAD_HEAP
        )
        count += whole or reserved
    return count


def test_the_agent_shows_its_session_work_containers_and_footprint(
    fleet: tuple[OneNodeFleet, str], tmp_path: Path
) -> None:
    f, url = fleet
    made = f.api.post(
        "/api/instances/deploy",
        {
            "image": TEST_IMAGE,
            "memory": "64",
            "cpu": "50",
            "ports": str(f.ports[0]),
            "nodeId": f.node_id,
            "name": "m",
        },
    )
    assert made.status == 201, made.body
    iid = made.body["id"]
    wait_state(f.api, iid, "running", timeout=10)
    wait_for(lambda: f'moorage_agent_instance_rx_bytes{{instance="{iid}"}}' in scrape(url), 10, "its bytes")
    text = scrape(url)
    assert value(text, "moorage_agent_session_connected") == 1
    assert value(text, "moorage_agent_heartbeats_sent_total") >= 1
    assert value(text, 'moorage_agent_commands_total{kind="deploy",outcome="ok"}') == 1
    assert value(text, 'moorage_agent_command_duration_seconds_count{kind="deploy"}') == 1
    assert value(text, 'moorage_agent_containers{state="running"}') == 1
    assert value(text, 'moorage_agent_docker_call_duration_seconds_count{call="list"}') >= 1
    assert value(text, "process_resident_memory_bytes") > 10 * 2**20
    assert value(text, "moorage_agent_asyncio_tasks") >= 3 and value(text, "moorage_agent_threads") >= 2
    # glibc's heap: the agent's live C blocks (protobufs, grpc, Python's large objects) are megabytes.
    assert value(text, "moorage_agent_heap_in_use_bytes") > 2**20
    assert value(text, "moorage_agent_heap_free_bytes") >= 0
    # Its threads (grpc's, the metrics server's, the pool's) share the main arena (malloc_arenas: 1).
    assert f.agent.proc is not None
    assert thread_arenas(f.agent.proc.pid) == 0
    promtool_check(text, tmp_path)
    promtool_check(scrape(f.coordinator.endpoints["http"] + "/metrics", f.coordinator.admin_key), tmp_path)
    # Deleted: its series go with it, and the count of running containers follows.
    deleted = f.api.delete("/api/instance/delete", {"id": iid})
    assert deleted.status == 201, deleted.body
    wait_for(lambda: f'instance="{iid}"' not in scrape(url), 15, "its series to go")
    assert value(scrape(url), 'moorage_agent_containers{state="running"}') == 0


def test_a_lost_session_shows_until_the_agent_is_back(fleet: tuple[OneNodeFleet, str]) -> None:
    f, url = fleet
    before = value(scrape(url), "moorage_agent_reconnects_total")
    f.coordinator.stop()
    try:
        wait_for(lambda: value(scrape(url), "moorage_agent_session_connected") == 0, 10, "the session down")
        assert value(scrape(url), "moorage_agent_reconnects_total") > before
    finally:
        f.coordinator.start()
    wait_for(lambda: value(scrape(url), "moorage_agent_session_connected") == 1, 20, "the session back")
