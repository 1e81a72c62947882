"""Node health from heartbeats, with a controlled clock: statuses, the monitor's transitions, batching."""

from __future__ import annotations

import asyncio

from coordinator.config import FleetOptions
from coordinator.fleet import Fleet
from coordinator.model import NodeStatus
from protos import moorage_pb2 as pb
from tests.unit.factories import make_node


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fleet(clock: Clock) -> Fleet:
    return Fleet(FleetOptions(heartbeat_interval_s=1.0, grace_intervals=3, offline_after_s=10.0), clock=clock)


def test_judge_follows_the_heartbeat_age() -> None:
    clock = Clock()
    f = fleet(clock)
    assert f.judge(None) is NodeStatus.AWAITING_HEARTBEAT
    assert f.judge(clock.now - 2.9) is NodeStatus.READY
    assert f.judge(clock.now - 3.1) is NodeStatus.HEARTBEAT_ABNORMAL
    assert f.judge(clock.now - 10.1) is NodeStatus.OFFLINE
    assert f.status_of(make_node("n", enrolled=False)) is NodeStatus.AWAITING_ENROLLMENT
    # After a restart, a stored heartbeat alone never makes a node ready; an old one still says offline.
    assert f.status_of(make_node("n", last_checked=clock.now - 1)) is NodeStatus.AWAITING_HEARTBEAT
    assert f.status_of(make_node("n", last_checked=clock.now - 60)) is NodeStatus.OFFLINE


async def test_monitor_reports_each_transition_once() -> None:
    clock = Clock()
    f = fleet(clock)
    seen: list[tuple[str, NodeStatus, NodeStatus]] = []

    async def listener(node_id: str, old: NodeStatus, new: NodeStatus) -> None:
        seen.append((node_id, old, new))

    f.listeners.append(listener)
    monitor = asyncio.create_task(f.run_monitor())
    try:
        f.record_heartbeat("n", pb.HostMetrics(cpu_percent=1.0), [])
        await asyncio.sleep(0.05)
        clock.now += 3.5
        f._wake.set()
        await asyncio.sleep(0.05)
        clock.now += 7.0
        f._wake.set()
        await asyncio.sleep(0.05)
        f.record_heartbeat("n", None, [])
        await asyncio.sleep(0.05)
    finally:
        monitor.cancel()
        await asyncio.gather(monitor, return_exceptions=True)
    assert [(o, n) for _, o, n in seen] == [
        (NodeStatus.AWAITING_HEARTBEAT, NodeStatus.READY),
        (NodeStatus.READY, NodeStatus.HEARTBEAT_ABNORMAL),
        (NodeStatus.HEARTBEAT_ABNORMAL, NodeStatus.OFFLINE),
        (NodeStatus.OFFLINE, NodeStatus.READY),
    ]


def test_heartbeats_are_batched_not_written_one_by_one() -> None:
    clock = Clock()
    f = fleet(clock)
    for n in range(3):
        f.record_heartbeat("a", pb.HostMetrics(cpu_percent=float(n)), [pb.InstanceStatus(instance_id="i")])
        f.record_heartbeat("b", pb.HostMetrics(), [])
    batch = f.take_dirty()
    assert set(batch) == {"a", "b"} and batch["a"][1]["cpuPercent"] == 2.0
    assert f.take_dirty() == {}
