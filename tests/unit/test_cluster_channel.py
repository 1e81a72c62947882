"""The node channel across coordinators, as logic: two channels joined by an in-memory bus that delivers
to every subscriber as NOTIFY does (the real bus, PostgreSQL, carries tests/integration/test_cluster.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from coordinator.config import FleetOptions
from coordinator.domain.agents import ClusterView, Command, CommandKind, CommandResult, Heartbeat, Workload
from coordinator.domain.records import NodeStatus
from coordinator.fleet.cluster import ClusterChannel
from coordinator.fleet.live import Fleet
from tests.unit.factories import make_instance, make_node


class MemoryBus:
    def __init__(self) -> None:
        self.leading = False
        self.channels: list[ClusterChannel] = []
        self.sent: list[dict[str, Any]] = []

    async def publish(self, message: dict[str, Any]) -> bool:
        self.sent.append(message)
        for channel in self.channels:
            channel.receive(message)
        return True


class Rows:
    """What the database would say: who holds which node."""

    def __init__(self) -> None:
        self.holders: dict[str, tuple[str, float]] = {}
        self.alive: set[str] = set()
        self.now = 100.0  # the database's clock

    async def join(self, me: str, name: str, address: str) -> None:
        self.alive.add(me)

    async def touch(self, me: str) -> None: ...

    async def leave(self, me: str) -> None:
        self.alive.discard(me)

    async def hold(self, node_id: str, me: str) -> float | None:
        self.now += 1
        if node_id in self.holders and self.holders[node_id][1] > self.now:
            return None
        self.holders[node_id] = (me, self.now)
        return self.now

    async def view(self, me: str, alive_s: float) -> ClusterView:
        owners = {n: c for n, (c, _) in self.holders.items() if c != me and c in self.alive}
        orphans = frozenset(n for n, (c, _) in self.holders.items() if c not in self.alive)
        since = {n: s for n, (_, s) in self.holders.items()}
        return ClusterView(owners, dict.fromkeys(self.holders, 999.0), orphans, (), since)


async def settle() -> None:
    """Let the spawned publishes and relays run."""
    for _ in range(5):
        await asyncio.sleep(0)


OPTIONS = FleetOptions(heartbeat_interval_s=1.0, grace_intervals=3, offline_after_s=10.0, batch_period_s=0.1)


async def pair(
    clock: Callable[[], float] = lambda: 1000.0,
) -> tuple[ClusterChannel, ClusterChannel, MemoryBus, list[tuple[Any, ...]]]:
    """Two coordinators, a and b, joined."""
    bus, rows, delivered = MemoryBus(), Rows(), []

    async def deliver(node: str, kind: CommandKind, iid: str, cid: str, wait: float | None) -> CommandResult:
        delivered.append((node, kind, iid, cid, wait))
        return CommandResult(cid, iid, ok=False, error="no such image")

    a = ClusterChannel("a", Fleet(OPTIONS, clock=clock), bus, rows, deliver, clock=clock)
    b = ClusterChannel("b", Fleet(OPTIONS, clock=clock), bus, rows, deliver, clock=clock)
    bus.channels = [a, b]
    await a.join("a", "a:7443")
    await b.join("b", "b:7443")
    return a, b, bus, delivered


async def test_a_command_for_a_node_held_elsewhere_is_relayed_and_its_result_comes_back() -> None:
    a, b, _bus, delivered = await pair()
    a.fleet.attach("n1")
    await a.hold("n1")
    await settle()
    assert b.is_connected("n1") and b.owners == {"n1": "a"}
    command = Command(CommandKind.DEPLOY, Workload(make_instance("i1", node_id="n1")))
    result = await b.send("n1", command, 1.0)
    assert result == CommandResult(command.command_id, "i1", ok=False, error="no such image")
    assert delivered == [("n1", CommandKind.DEPLOY, "i1", command.command_id, 1.0)]
    assert b.post("n1", command)
    await settle()
    assert len(delivered) == 2 and delivered[-1][-1] is None  # fire and forget: no wait, no answer


async def test_the_coordinator_an_agent_left_stops_watching_its_node() -> None:
    a, b, _bus, _ = await pair()
    a.fleet.attach("n1")
    await a.hold("n1")
    a.fleet.record_heartbeat("n1", Heartbeat())
    b.fleet.attach("n1")
    await b.hold("n1")  # the agent came back through b
    await settle()
    assert "n1" not in a.fleet.live and not a.fleet.is_connected("n1")
    assert a.fleet.status_of(make_node("n1", last_checked=999.0)) is NodeStatus.READY  # read as b holds it


async def test_the_holders_word_on_its_node_shows_through_the_others_at_once() -> None:
    """Status and engine changes travel as news, so the others neither wait for their next read of the rows
    nor judge the node silent sooner than its holder does."""
    now = [1000.0]
    a, b, _bus, _ = await pair(lambda: now[0])
    a.fleet.attach("n1")
    await a.hold("n1")
    await settle()
    a.fleet.record_heartbeat("n1", Heartbeat())
    await settle()
    stored = make_node("n1", last_checked=1000.0)  # what a's last batch write left in the row
    assert b.fleet.status_of(stored) is NodeStatus.READY and "n1" in b.fleet.ready
    a.fleet.record_heartbeat("n1", Heartbeat(engine_error="Cannot connect to the Docker daemon"))
    await settle()
    assert b.fleet.engine_error("n1") == "Cannot connect to the Docker daemon"
    # Past a's grace (3 s) but before a's monitor ran: b, reading a row up to a batch period old, waits.
    now[0] = 1003.05
    assert b.fleet.status_of(stored) is NodeStatus.READY
    a.fleet.judge_due()  # a says the node went silent: b shows it so at once
    await settle()
    assert a.fleet.live["n1"].status is NodeStatus.HEARTBEAT_ABNORMAL
    assert b.fleet.status_of(stored) is NodeStatus.HEARTBEAT_ABNORMAL and "n1" not in b.fleet.ready
    await b.refresh()  # a read of older rows does not undo the news
    assert b.fleet.status_of(stored) is NodeStatus.HEARTBEAT_ABNORMAL
    a.fleet.record_heartbeat("n1", Heartbeat())  # the agent reports again, its engine answering
    await settle()
    assert b.fleet.status_of(stored) is NodeStatus.READY and "n1" in b.fleet.ready
    assert b.fleet.engine_error("n1") is None


async def test_the_leader_alone_watches_a_node_whose_holder_died() -> None:
    a, b, bus, _ = await pair()
    b.fleet.attach("n1")
    await b.hold("n1")
    await settle()
    await b.leave()  # b is gone
    await a.refresh()
    assert "n1" not in a.fleet.live  # not the leader: not its to judge
    bus.leading = True
    await a.refresh()
    assert "n1" in a.fleet.live and a.fleet.live["n1"].expected_since is not None


async def test_old_news_of_a_session_does_not_end_a_newer_one_here() -> None:
    """b's late "held" (its session began before the agent came to a) leaves a's session alone, and a
    refresh that reads a row naming b while a's session is the newer records a's again."""
    a, b, bus, _ = await pair()
    b.fleet.attach("n1")
    await b.hold("n1")
    await settle()
    stale = bus.sent[-1]
    session = a.fleet.attach("n1")
    await a.hold("n1")
    await settle()
    a.receive(stale)  # delivered late
    assert a.fleet.is_connected("n1") and not session.closed
    rows = a.membership
    assert isinstance(rows, Rows)
    rows.holders["n1"] = ("b", 50.0)  # a row written by b's slow, older hello
    await a.refresh()
    await settle()
    assert a.fleet.is_connected("n1") and rows.holders["n1"][0] == "a"


async def test_a_session_whose_hello_is_being_recorded_is_not_ended_by_older_news() -> None:
    """The agent just came to a from b; until a has recorded it, neither b's row nor b's late "held"
    ends a's session."""
    a, b, _bus, _ = await pair()
    b.fleet.attach("n1")
    await b.hold("n1")
    await settle()
    stale = {"t": "held", "from": "b", "node": "n1", "since": 101.0}
    session = a.fleet.attach("n1")  # Hello arrived; hold() not done yet
    await a.refresh()
    a.receive(stale)
    assert a.fleet.is_connected("n1") and not session.closed


async def test_a_former_leader_stops_judging_the_nodes_nobody_holds() -> None:
    a, b, bus, _ = await pair()
    b.fleet.attach("n1")
    await b.hold("n1")
    await settle()
    await b.leave()
    bus.leading = True
    await a.refresh()
    assert "n1" in a.fleet.live
    bus.leading = False
    await a.refresh()
    assert "n1" not in a.fleet.live


async def test_deleting_a_node_closes_its_session_wherever_it_is_and_placement_changes_travel() -> None:
    a, b, _bus, _ = await pair()
    forgotten: list[str] = []
    a.placement_changed = lambda: forgotten.append("a")
    await a.join("a", "a:7443")
    await b.join("b", "b:7443")
    session = a.fleet.attach("n1")
    await a.hold("n1")
    await settle()
    b.close("n1")
    b.tell_placement_changed()
    await settle()
    assert session.closed and not a.fleet.is_connected("n1")
    assert forgotten == ["a"]
