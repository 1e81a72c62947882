"""Node health from heartbeats, with a controlled clock: statuses, the monitor's transitions, batching."""

from __future__ import annotations

import asyncio
import gc
import itertools
import tracemalloc

import pytest

from coordinator.config import FleetOptions
from coordinator.domain.agents import (
    Command,
    CommandKind,
    CommandResult,
    Heartbeat,
    InstanceStatus,
    Workload,
)
from coordinator.domain.records import HostMetrics, NodeBeat, NodeStatus
from coordinator.fleet.live import Fleet, Session
from tests.unit.factories import make_instance, make_node, settle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fleet(clock: Clock) -> Fleet:
    return Fleet(FleetOptions(heartbeat_interval_s=1.0, grace_intervals=3, offline_after_s=10.0), clock=clock)


def recorded(f: Fleet) -> list[tuple[str, NodeStatus, NodeStatus]]:
    """The status changes the fleet reports to its listeners, as they happen."""
    seen: list[tuple[str, NodeStatus, NodeStatus]] = []

    async def listener(node_id: str, old: NodeStatus, new: NodeStatus) -> None:
        seen.append((node_id, old, new))

    f.listeners.append(listener)
    return seen


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
    seen = recorded(f)
    f.record_heartbeat("n", Heartbeat(host=HostMetrics(cpu_percent=1.0)))
    assert f.judge_due() == pytest.approx(3.0)  # the monitor sleeps until the deadline
    clock.now += 3.5
    f.judge_due()
    f.judge_due()  # judged once: nothing new to say
    clock.now += 7.0
    f.judge_due()
    f.record_heartbeat("n", Heartbeat())
    await settle()  # the listeners run in tasks of their own
    assert [(o, n) for _, o, n in seen] == [
        (NodeStatus.AWAITING_HEARTBEAT, NodeStatus.READY),
        (NodeStatus.READY, NodeStatus.HEARTBEAT_ABNORMAL),
        (NodeStatus.HEARTBEAT_ABNORMAL, NodeStatus.OFFLINE),
        (NodeStatus.OFFLINE, NodeStatus.READY),
    ]


async def test_heartbeats_move_a_nodes_deadline_without_an_entry_each() -> None:
    clock = Clock()
    f = fleet(clock)
    seen = recorded(f)
    for _ in range(100):  # 50 s of heartbeats every 0.5 s, the monitor waking as it would
        f.record_heartbeat("n", Heartbeat())
        clock.now += 0.5
        f.judge_due()
    assert len(f._deadlines) == 1  # one look a grace period, not one entry a heartbeat
    last = clock.now - 0.5
    clock.now = last + 2.9
    f.judge_due()
    assert "n" in f.ready  # judged from its last heartbeat (grace 3 s), not from an earlier one
    clock.now = last + 3.1
    f.judge_due()
    await settle()
    assert [n for _, _, n in seen] == [NodeStatus.READY, NodeStatus.HEARTBEAT_ABNORMAL]


async def test_a_node_expected_after_a_restart_that_never_reports_goes_abnormal() -> None:
    """After a coordinator restart, an agent that does not come back is judged silent from that start:
    its node goes abnormal, then offline, so its instances do not read running forever. One that comes
    back in time changes nothing."""
    clock = Clock()
    options = FleetOptions(
        heartbeat_interval_s=1.0, grace_intervals=3, offline_after_s=10.0, startup_grace_s=5
    )
    f = Fleet(options, clock=clock)
    seen = recorded(f)
    f.expect(["gone", "back"])
    f.judge_due()
    await settle()
    assert seen == [] and f.status_of(make_node("back")) is NodeStatus.AWAITING_HEARTBEAT
    clock.now += 4.0  # within the startup grace (5 s), though past the usual one (3 s)
    f.judge_due()
    await settle()
    assert seen == []
    for _ in range(6):  # 12 s more: past the startup grace and the offline time (10 s) of "gone"
        f.record_heartbeat("back", Heartbeat())
        clock.now += 2.0
        f.judge_due()
    await settle()
    assert seen == [
        ("gone", NodeStatus.READY, NodeStatus.HEARTBEAT_ABNORMAL),
        ("gone", NodeStatus.HEARTBEAT_ABNORMAL, NodeStatus.OFFLINE),
    ]
    assert "back" in f.ready and "gone" not in f.ready


def test_heartbeats_are_batched_not_written_one_by_one() -> None:
    clock = Clock()
    f = fleet(clock)
    for n in range(3):
        f.record_heartbeat(
            "a", Heartbeat([InstanceStatus(instance_id="i")], HostMetrics(cpu_percent=float(n)))
        )
        f.record_heartbeat("b", Heartbeat(host=HostMetrics()))
    batch = f.take_dirty()
    assert set(batch) == {"a", "b"} and batch["a"].host == HostMetrics(cpu_percent=2.0)
    assert f.take_dirty() == {}
    # A partial heartbeat carries no host metrics: lastChecked is written, the stored metrics stand.
    clock.now += 1
    f.record_heartbeat("a", Heartbeat(partial=True))
    assert f.take_dirty() == {"a": NodeBeat(clock.now, None, "")}


def drain(session: Session) -> None:
    """What the gateway's writer does: the messages leave for the agent (which never answers here)."""
    session.outbox.clear()


async def test_commands_nobody_answers_leave_nothing_behind() -> None:
    """An agent that goes away (or never answers) before its results: every wait ends, on its timeout or
    when the session ends, and the coordinator's memory does not grow with such commands."""
    f = Fleet(FleetOptions())
    ids = itertools.count()

    work = Workload(make_instance("i"))

    def command() -> Command:
        return Command(CommandKind.START, work, command_id=f"c{next(ids)}")

    async def one_round() -> None:
        session = f.attach("n1")
        timed_out = await asyncio.gather(*(f.send("n1", command(), 0.001) for _ in range(200)))
        assert timed_out == [None] * 200
        pending = [asyncio.create_task(f.send("n1", command(), 60)) for _ in range(200)]
        await asyncio.sleep(0)
        assert f.waiting == 200
        f.detach(session)  # the agent went away
        ended = await asyncio.wait_for(asyncio.gather(*pending), 1)
        assert ended == [None] * 200 and f.waiting == 0
        drain(session)
        # A result that arrives after its wait ended finds nobody and is dropped.
        f.resolve(CommandResult(command_id="c0", ok=True))
        assert f.waiting == 0

    await one_round()
    gc.collect()
    tracemalloc.start()
    try:
        await one_round()
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20):
            await one_round()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, f"{grown} bytes kept after 8,000 unanswered commands"
