"""Partial heartbeats with a real coordinator, a real agent and real Docker: between full heartbeats the
agent says only that it lives and what changed, yet a change still reaches the API within one interval,
and a node judged silent shows its instances running again as soon as it is heard (the coordinator asks
it for the whole truth). The full heartbeats come every 20 intervals here, so neither can be explained
by one of them."""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.request
from collections.abc import Iterator

import docker
import pytest

from bench.daemons import (
    TEST_FLEET,
    OneNodeFleet,
    instance,
    node_view,
    one_node_fleet,
    wait_for,
    wait_state,
)
from tests.dockerenv import require_docker, serves

pytestmark = pytest.mark.docker

INTERVAL_S = 1.0
FULL_EVERY = 20
FLEET = {
    **TEST_FLEET,
    "heartbeat_interval_s": INTERVAL_S,
    "offline_after_s": 30.0,
    "full_report_every": FULL_EVERY,
}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OneNodeFleet]:
    require_docker()
    with one_node_fleet(
        tmp_path_factory.mktemp("partial"), ports=2, coordinator_options={"fleet": FLEET}
    ) as found:
        yield found


def counters(fleet: OneNodeFleet) -> dict[str, float]:
    r = urllib.request.Request(fleet.coordinator.endpoints["http"] + "/metrics")
    r.add_header("x-api-key", fleet.coordinator.admin_key)
    with urllib.request.urlopen(r, timeout=5) as resp:
        text = resp.read().decode()
    return {
        m.group(1): float(m.group(2))
        for line in text.splitlines()
        if (
            m := re.match(
                r'^(moorage_heartbeat(?:s|s_partial|_statuses)_total(?:\{kind="\w+"\})?) (\S+)$', line
            )
        )
    }


def deployed(fleet: OneNodeFleet, port: int, name: str) -> tuple[str, str]:
    iid = fleet.deploy(port, name)["id"]
    cid = wait_state(fleet.api, iid, "running")["ContainerId"]
    wait_for(lambda: serves(port), 5, "the page")
    return iid, cid


def test_unchanged_heartbeats_carry_nothing_and_a_change_reaches_the_api_within_an_interval(
    fleet: OneNodeFleet, engine: docker.DockerClient
) -> None:
    iid, cid = deployed(fleet, fleet.ports[0], "quiet")
    before = counters(fleet)
    time.sleep(5 * INTERVAL_S)
    after = counters(fleet)
    partial = after["moorage_heartbeats_partial_total"] - before["moorage_heartbeats_partial_total"]
    carried = 'moorage_heartbeat_statuses_total{kind="partial"}'
    assert partial >= 3, (before, after)  # the node beats on, and is ready all along
    assert after[carried] == before[carried], (before, after)  # but says nothing of its container
    assert node_view(fleet.api, fleet.node_id)["status"] == "ready"

    # A pause: the engine tells the agent nothing of it (no event it follows), only its next look does.
    container = engine.containers.get(cid)
    container.pause()
    paused_at = time.monotonic()
    wait_for(lambda: instance(fleet.api, iid)["state"] == "unhealthy", 3 * INTERVAL_S, "unhealthy")
    took = time.monotonic() - paused_at
    assert "paused" in instance(fleet.api, iid)["error"]
    container.unpause()
    unpaused_at = time.monotonic()
    wait_state(fleet.api, iid, "running", timeout=3 * INTERVAL_S)
    back = time.monotonic() - unpaused_at
    # Within an interval (the agent's own jitter is ±10%), plus the handling; a full heartbeat would be
    # up to 20 intervals away.
    assert took <= 1.1 * INTERVAL_S + 0.5 and back <= 1.1 * INTERVAL_S + 0.5, (took, back)
    assert counters(fleet)[carried] >= after[carried] + 2  # the two changes, each in a partial heartbeat


def test_a_node_judged_silent_on_an_open_session_shows_its_instance_running_as_soon_as_heard(
    fleet: OneNodeFleet,
) -> None:
    """The agent stops (SIGSTOP: a hung host) long enough to be judged silent, then goes on over the same
    session: its next partial heartbeats would say nothing of the instance, which did not change."""
    iid, _ = deployed(fleet, fleet.ports[1], "hung")
    assert fleet.agent.proc is not None
    pid = fleet.agent.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: instance(fleet.api, iid)["state"] == "unhealthy", 6 * INTERVAL_S, "unhealthy")
        assert node_view(fleet.api, fleet.node_id)["status"] == "heartbeat_abnormal"
    finally:
        os.kill(pid, signal.SIGCONT)
    resumed = time.monotonic()
    wait_state(fleet.api, iid, "running", timeout=FULL_EVERY * INTERVAL_S)
    assert time.monotonic() - resumed <= 3 * INTERVAL_S  # asked for, not waited for
    assert fleet.agent.proc is not None and fleet.agent.proc.pid == pid  # the same agent, not restarted
