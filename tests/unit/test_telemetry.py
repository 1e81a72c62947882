"""The agent's per-container network counters: read from the process's own /proc (a real namespace), and
dropped when the container is gone, so a months-long agent does not keep one per container ever seen."""

from __future__ import annotations

import os

from agent.telemetry import Telemetry, read_net_dev


def test_counters_are_read_and_those_of_gone_containers_dropped() -> None:
    telemetry = Telemetry(disk_path="/")
    assert read_net_dev(os.getpid()) is not None  # this process's namespace has interfaces
    rx, tx, _, _ = telemetry.container_network("c-1", os.getpid())
    telemetry.container_network("c-2", os.getpid())
    assert rx >= 0 and tx >= 0
    assert set(telemetry._containers) == {"c-1", "c-2"}
    telemetry.keep_only({"c-2"})
    assert set(telemetry._containers) == {"c-2"}
    assert telemetry.container_network("c-3", 0) == (0, 0, 0.0, 0.0)  # not running: nothing kept
    assert set(telemetry._containers) == {"c-2"}
