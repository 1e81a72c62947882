"""The live view of the fleet: agent sessions, heartbeats in memory, node health and command dispatch.

Heartbeats never touch the database on arrival: they update memory and mark the node dirty; one batch
writer flushes dirty nodes every batch period. Health is judged from the heartbeat deadline of each node,
kept in a heap, so the monitor wakes only for nodes whose deadline passed instead of scanning the fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from common.logging import get
from coordinator.config import FleetOptions
from coordinator.domain.agents import (
    Command,
    CommandResult,
    Heartbeat,
    Hello,
    InstanceStatus,
    Outgoing,
    ReportRequest,
)
from coordinator.domain.records import HostMetrics, Instance, Node, NodeBeat, NodeStatus
from coordinator.fleet.bandwidth import Bandwidth
from coordinator.fleet.logs import LogReaders

log = get("coordinator.fleet")


class Session:
    """One connected agent. Messages to it go through ``outbox``; the gateway's writer drains it."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        #: Plain containers, not an asyncio.Queue and Event: nobody awaits them (the writer is woken), and
        #: those cost ~2.5 KB more a session, 25 MiB for 10,000 agents.
        self.outbox: deque[Outgoing | None] = deque()
        self.closed = False
        self.connected_at = time.time()
        #: When the database recorded this session as the node's (several coordinators), by its clock.
        self.since: float | None = None
        #: Ids of the commands sent here whose results someone waits for.
        self.waiting: set[str] = set()
        #: Told when something was put in the outbox (the gateway writes only while there is something to
        #: write: an idle session keeps no writer task), and when the session is closed from this side.
        self.wake: Callable[[], None] | None = None
        self.on_close: Callable[[], None] | None = None

    def send(self, message: Outgoing) -> None:
        if not self.closed:
            self.outbox.append(message)
            if self.wake is not None:
                self.wake()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.outbox.append(None)
            if self.on_close is not None:
                self.on_close()


@dataclass(slots=True)
class LiveNode:
    last_heartbeat: float | None = None
    host: HostMetrics | None = None
    status: NodeStatus = NodeStatus.AWAITING_HEARTBEAT
    #: From the agent's Hello: images on the host and whether it may pull others.
    images: frozenset[str] = frozenset()
    pull_policy: str = "missing"
    #: Instances of this node the database shows running: a heartbeat without one of them means it vanished.
    confirmed: set[str] = field(default_factory=set)
    #: Labelled containers the agent reports as wanted by nobody, each with the time it removes them.
    unwanted: tuple[InstanceStatus, ...] = ()
    #: Host metrics came since the batch writer last stored them.
    host_unwritten: bool = False
    #: When the monitor looks at the node next (its earliest deadline in the heap; None: none there). A
    #: heartbeat moves the node's deadline later without a new entry: the monitor, finding the node
    #: heard since, puts it back at its new deadline, one heap entry a grace period, not one a heartbeat.
    due: float | None = None
    #: Why the node's container engine did not answer its agent, as of the last heartbeat ("" when it did).
    engine_error: str = ""
    #: For a node that had a session before this process started (None: not expected): until its first
    #: heartbeat here it is judged as if it had last reported at this time (the startup grace's end less
    #: the usual grace).
    expected_since: float | None = None


@dataclass(slots=True)
class RemoteNode:
    """A node whose session another coordinator holds, as that coordinator last told (its batch writes,
    read every batch period, and its news over the bus when the node's status or engine changes)."""

    last_checked: float | None = None
    engine_error: str = ""
    #: Its holder said it stopped reporting, as of ``last_checked``.
    silent: bool = False


#: Called by the monitor when a node's status changes: (node id, old, new).
StatusListener = Callable[[str, NodeStatus, NodeStatus], Coroutine[Any, Any, None]]


class Fleet:
    def __init__(self, options: FleetOptions, clock: Callable[[], float] = time.time) -> None:
        self.options = options
        self.clock = clock
        self.sessions: dict[str, Session] = {}
        self.live: dict[str, LiveNode] = {}
        self._dirty: set[str] = set()
        self._results: dict[str, asyncio.Future[CommandResult | None]] = {}
        self._deadlines: list[tuple[float, str]] = []
        self._wake = asyncio.Event()
        self.listeners: list[StatusListener] = []
        #: Listener calls still running (their own tasks): settle() waits for them.
        self._heard: set[asyncio.Task[None]] = set()
        #: Nodes whose last heartbeat is fresh, kept as statuses change: placement reads it per decision.
        self.ready: set[str] = set()
        #: Instances known to be running in the database (to their node), so a heartbeat confirming them
        #: costs nothing.
        self.confirmed_running: dict[str, str] = {}
        #: Releasing instances whose agent has been told to remove the container (the servers dialect
        #: shows them "stopping" rather than "shutdown").
        self.removing: set[str] = set()
        #: Per-instance byte totals and rates, folded from every heartbeat's counters.
        self.bandwidth = Bandwidth()
        #: Nodes whose session another coordinator on the database holds, with their stored last heartbeat
        #: (that coordinator writes it every batch period): read as that one sees them, never watched here.
        self.remote: dict[str, RemoteNode] = {}
        #: Called when a node whose session is here changes status or engine error (the cluster tells the
        #: other coordinators at once instead of at their next read).
        self.on_change: Callable[[str], None] | None = None
        #: Log requests sent down this coordinator's sessions, and who reads them.
        self.logs = LogReaders()

    # ------------------------------------------------------------ sessions

    def attach(self, node_id: str) -> Session:
        """Register a session; an older one of the same node (a reconnect we missed) is closed."""
        old = self.sessions.get(node_id)
        if old is not None:
            old.close()
            self._end_waits(old)
            self.logs.node_gone(node_id)
        session = Session(node_id)
        self.sessions[node_id] = session
        self.live.setdefault(node_id, LiveNode())
        return session

    def detach(self, session: Session) -> None:
        session.close()
        self._end_waits(session)
        if self.sessions.get(session.node_id) is session:
            del self.sessions[session.node_id]
            self.logs.node_gone(session.node_id)

    def disconnect(self, node_id: str) -> None:
        session = self.sessions.get(node_id)
        if session is not None:
            self.detach(session)

    def forget(self, node_id: str) -> None:
        self.disconnect(node_id)
        live = self.live.pop(node_id, None)
        for instance_id in live.confirmed if live is not None else ():
            self.confirmed_running.pop(instance_id, None)
        self.ready.discard(node_id)
        self._dirty.discard(node_id)
        if live is not None:
            self.bandwidth.not_heard(node_id)  # its instances read from the rows again

    def expect(self, node_ids: Sequence[str]) -> None:
        """At start: these nodes reported to an earlier run of the coordinator. One whose agent does not
        come back within ``startup_grace_s`` goes heartbeat-abnormal (its instances unhealthy), then
        offline, as if its last heartbeat had come just before that grace began to run out, instead of
        showing its instances running forever."""
        now = self.clock()
        # The time the usual grace is counted from: it then ends when the startup grace does.
        since = now + max(self.options.startup_grace_s - self.grace_s, 0.0)
        for node_id in node_ids:
            live = self.live.setdefault(node_id, LiveNode())
            if live.last_heartbeat is None:
                live.expected_since, live.status = since, NodeStatus.READY
                self._schedule(node_id, live, since + self.grace_s + 0.001)

    def is_connected(self, node_id: str) -> bool:
        return node_id in self.sessions

    def close(self, node_id: str) -> None:
        """The node is gone (deleted): its session ends and nothing of it is kept."""
        self.forget(node_id)
        self.remote.pop(node_id, None)

    def held_elsewhere(
        self, node_id: str, last_checked: float | None, engine_error: str = "", silent: bool | None = None
    ) -> None:
        """Another coordinator holds the node's session now: this one stops watching it (its monitor must
        not judge a node whose heartbeats go elsewhere) and shows it as its holder last told. Older news
        than what it has (a read that began before a push) changes nothing; so does a read of the same
        heartbeat (``silent`` None: it cannot say what the holder made of it)."""
        if node_id in self.live:
            self.forget(node_id)
        known = self.remote.get(node_id)
        new, old = last_checked or 0.0, (known.last_checked or 0.0) if known is not None else -1.0
        if new > old or (new == old and silent is not None):
            known = self.remote[node_id] = RemoteNode(last_checked, engine_error, bool(silent))
        assert known is not None
        if self.judge_remote(known) is NodeStatus.READY:
            self.ready.add(node_id)
        else:
            self.ready.discard(node_id)

    def held_nowhere(self, node_id: str) -> None:
        if node_id in self.remote:
            del self.remote[node_id]
            if node_id not in self.live:
                self.ready.discard(node_id)

    def watch(self, node_id: str, last_checked: float | None) -> None:
        """Judge a node that no live coordinator holds (its holder died): as at a start, its agent has the
        startup grace to come back before it counts as silent; one silent already is judged from its own
        last heartbeat (its holder marked it when it went)."""
        if node_id in self.live:
            return
        self.remote.pop(node_id, None)
        status = self.judge(last_checked)
        if status is NodeStatus.READY:
            self.expect([node_id])
            return
        self.ready.discard(node_id)
        live = self.live[node_id] = LiveNode(status=status, expected_since=last_checked)
        if last_checked is not None:
            self._schedule(node_id, live, last_checked + self.options.offline_after_s + 0.001)

    # ------------------------------------------------------------ confirmed instances

    def confirm(self, node_id: str, instance_id: str) -> None:
        self.confirmed_running[instance_id] = node_id
        self.live.setdefault(node_id, LiveNode()).confirmed.add(instance_id)

    def unconfirm(self, instance_id: str) -> None:
        node_id = self.confirmed_running.pop(instance_id, None)
        live = self.live.get(node_id) if node_id is not None else None
        if live is not None:
            live.confirmed.discard(instance_id)

    def vanished(self, node_id: str, hb: Heartbeat) -> set[str]:
        """Confirmed instances of the node that a full report (heartbeat or Hello) no longer lists, or a
        partial one says are gone; all of them while its engine does not answer (nothing is known to run)."""
        live = self.live.get(node_id)
        if live is None or not live.confirmed:
            return set()
        if live.engine_error:
            return set(live.confirmed)
        if hb.partial:
            return live.confirmed.intersection(hb.gone)
        return live.confirmed.difference(s.instance_id for s in hb.instances)

    def request_report(self, node_id: str) -> None:
        """Ask the node's agent for a full heartbeat (what its partial ones said is no longer known here)."""
        session = self.sessions.get(node_id)
        if session is not None:
            session.send(ReportRequest())

    def forget_instance(self, instance_id: str) -> None:
        """A released instance: nothing of it stays in memory."""
        self.unconfirm(instance_id)
        self.removing.discard(instance_id)
        self.bandwidth.retire(instance_id)

    def overlay(self, inst: Instance) -> Instance:
        """The stored instance with what heartbeats here say since the last batch write: byte totals,
        rates, crash restarts, a cap not in force (the row has what the holder wrote)."""
        return self.bandwidth.overlay(inst)

    def engine_error(self, node_id: str) -> str | None:
        found = self.live.get(node_id) or self.remote.get(node_id)
        return (found.engine_error or None) if found is not None else None

    def beat(self, node_id: str) -> NodeBeat | None:
        """What a node whose session is here last reported, as the batch writer stores it."""
        live = self.live.get(node_id)
        if live is None or live.last_heartbeat is None:
            return None
        return NodeBeat(live.last_heartbeat, live.host if live.host_unwritten else None, live.engine_error)

    def unwanted(self, node_id: str) -> tuple[InstanceStatus, ...]:
        live = self.live.get(node_id)
        return live.unwanted if live is not None else ()

    # ------------------------------------------------------------ heartbeats and health

    def note_hello(self, node_id: str, hello: Hello) -> None:
        live = self.live.setdefault(node_id, LiveNode())
        live.images, live.pull_policy = hello.images, hello.pull_policy

    def image_policy(self, node_id: str) -> tuple[frozenset[str], str] | None:
        """(images on the host, its agent's pull policy) as its Hello said; None before one came."""
        live = self.live.get(node_id)
        return (live.images, live.pull_policy) if live is not None else None

    def record_heartbeat(self, node_id: str, hb: Heartbeat) -> None:
        now = self.clock()
        live = self.live.setdefault(node_id, LiveNode())
        live.last_heartbeat = now
        if hb.engine_error != live.engine_error:
            live.engine_error = hb.engine_error
            log.warning("container engine", node_id=node_id, error=hb.engine_error or "answers again")
            if self.on_change is not None and live.status is NodeStatus.READY:
                self.on_change(node_id)
        if hb.host is not None:
            live.host, live.host_unwritten = hb.host, True
        if hb.instances:
            self.bandwidth.record(node_id, hb.instances)
        if hb.counters:
            self.bandwidth.count(node_id, hb.counters)
        if not hb.partial:
            unwanted = [status for status in hb.instances if status.remove_at_ms]
            if unwanted or live.unwanted:
                live.unwanted = tuple(unwanted)
        elif hb.instances or hb.gone:
            live.unwanted = _unwanted_after(live.unwanted, hb)
        self._dirty.add(node_id)
        self._schedule(node_id, live, now + self.grace_s)
        self.ready.add(node_id)
        if live.status is not NodeStatus.READY:
            previous, live.status = live.status, NodeStatus.READY
            self._notify(node_id, previous, NodeStatus.READY)

    @property
    def grace_s(self) -> float:
        return self.options.heartbeat_interval_s * self.options.grace_intervals

    def status_of(self, node: Node) -> NodeStatus:
        """Status from the freshest heartbeat known: memory first, the stored lastChecked after a restart."""
        if not node.enrolled:
            return NodeStatus.AWAITING_ENROLLMENT
        remote = self.remote.get(node.id)
        if remote is not None:
            # Held by another coordinator, which writes lastChecked every batch period.
            last = _latest(remote.last_checked, node.last_checked)
            return self.judge_remote(remote if last == remote.last_checked else RemoteNode(last))
        live = self.live.get(node.id)
        if live is not None and live.last_heartbeat is not None:
            return self.judge(live.last_heartbeat)
        # No heartbeat reached this process yet (it just restarted): the stored time may say abnormal or
        # offline, but never ready, or a node whose agent is down would show online for a grace period.
        status = self.judge(node.last_checked)
        return NodeStatus.AWAITING_HEARTBEAT if status is NodeStatus.READY else status

    def judge_remote(self, node: RemoteNode) -> NodeStatus:
        """A node held elsewhere. Its stored heartbeat lags its holder's by up to a batch period, so it is
        given that much more grace: it turns abnormal here when its holder says so (pushed at once) or a
        batch period after it would there, never before."""
        status = self.judge(node.last_checked, self.options.batch_period_s)
        if node.silent and status is NodeStatus.READY:
            return NodeStatus.HEARTBEAT_ABNORMAL
        return status

    def judge(self, last_heartbeat: float | None, lag_s: float = 0.0) -> NodeStatus:
        if last_heartbeat is None:
            return NodeStatus.AWAITING_HEARTBEAT
        age = self.clock() - last_heartbeat - lag_s
        if age <= self.grace_s:
            return NodeStatus.READY
        if age <= self.options.offline_after_s:
            return NodeStatus.HEARTBEAT_ABNORMAL
        return NodeStatus.OFFLINE

    def host_metrics(self, node: Node) -> HostMetrics | None:
        live = self.live.get(node.id)
        return live.host if live and live.host is not None else node.host_metrics

    def last_heartbeat(self, node: Node) -> float | None:
        live = self.live.get(node.id)
        if live is not None and live.last_heartbeat:
            return live.last_heartbeat
        remote = self.remote.get(node.id)
        return _latest(remote.last_checked, node.last_checked) if remote is not None else node.last_checked

    def _notify(self, node_id: str, old: NodeStatus, new: NodeStatus) -> None:
        if self.on_change is not None:
            self.on_change(node_id)
        for listener in self.listeners:
            task = asyncio.get_running_loop().create_task(listener(node_id, old, new))
            self._heard.add(task)
            task.add_done_callback(self._heard.discard)
            task.add_done_callback(_log_failure)

    async def settle(self) -> None:
        """Wait for the status listeners still running (they write to the store: before it closes)."""
        while self._heard:
            await asyncio.gather(*self._heard, return_exceptions=True)

    async def run_monitor(self) -> None:
        """Wake at the earliest heartbeat deadline; re-judge only the nodes whose deadline passed."""
        while True:
            delay = self.judge_due()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=min(max(delay, 0.01), 1.0))
            self._wake.clear()

    def judge_due(self) -> float:
        """Re-judge the nodes whose heartbeat deadline passed (listeners hear of each change); the time
        until the next deadline."""
        now = self.clock()
        while self._deadlines and self._deadlines[0][0] <= now:
            at, node_id = heapq.heappop(self._deadlines)
            live = self.live.get(node_id)
            if live is None:
                continue
            if live.due == at:
                live.due = None
            last = live.last_heartbeat if live.last_heartbeat is not None else live.expected_since
            status = self.judge(last)
            if status is NodeStatus.READY:
                assert last is not None
                self._schedule(node_id, live, last + self.grace_s + 0.001)  # heard since: its new deadline
            else:
                self.ready.discard(node_id)
            if status is not live.status:
                previous, live.status = live.status, status
                log.info("node status changed", node_id=node_id, old=previous.value, new=status.value)
                self._notify(node_id, previous, status)
            if status is NodeStatus.HEARTBEAT_ABNORMAL and last is not None:
                self._schedule(node_id, live, last + self.options.offline_after_s + 0.001)
        return self._deadlines[0][0] - now if self._deadlines else 1.0

    def _schedule(self, node_id: str, live: LiveNode, at: float) -> None:
        """See the node at ``at`` at the latest (an earlier look that finds it heard puts it back)."""
        if live.due is None or at < live.due:
            heapq.heappush(self._deadlines, (at, node_id))
            live.due = at

    def take_dirty(self) -> dict[str, NodeBeat]:
        batch = {node_id: beat for node_id in self._dirty if (beat := self.beat(node_id)) is not None}
        for node_id, beat in batch.items():
            if beat.host is not None:
                self.live[node_id].host_unwritten = False
        self._dirty.clear()
        return batch

    # ------------------------------------------------------------ commands

    def post(self, node_id: str, command: Command) -> bool:
        """Send a command if the node is connected, without waiting for its result. When it is not, nothing
        is lost: the node's desired set is in the database and reaches the agent in its next Welcome."""
        session = self.sessions.get(node_id)
        if session is None:
            return False
        session.send(command)
        return True

    async def send(self, node_id: str, command: Command, wait_s: float) -> CommandResult | None:
        """Send a command and wait up to ``wait_s`` for the agent's result. None when the node is not
        connected, does not answer in time, or its session ends first; either way nothing of the wait is
        kept (a result that comes later finds no one waiting and is dropped)."""
        session = self.sessions.get(node_id)
        if session is None:
            return None
        waiter: asyncio.Future[CommandResult | None] = asyncio.get_running_loop().create_future()
        self._results[command.command_id] = waiter
        session.waiting.add(command.command_id)
        session.send(command)
        try:
            return await asyncio.wait_for(waiter, wait_s)
        except TimeoutError:
            return None
        finally:
            self._results.pop(command.command_id, None)
            session.waiting.discard(command.command_id)

    def resolve(self, result: CommandResult) -> None:
        waiter = self._results.pop(result.command_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(result)

    @property
    def waiting(self) -> int:
        """Commands whose results someone still waits for (a gauge: it must not grow)."""
        return len(self._results)

    def _end_waits(self, session: Session) -> None:
        """The session ended: nobody gets an answer through it any more."""
        for command_id in session.waiting:
            waiter = self._results.pop(command_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        session.waiting.clear()


def _unwanted_after(unwanted: tuple[InstanceStatus, ...], hb: Heartbeat) -> tuple[InstanceStatus, ...]:
    """The unwanted containers once a partial heartbeat's changes are applied."""
    reported = {status.instance_id for status in hb.instances} | hb.gone
    kept = [status for status in unwanted if status.instance_id not in reported]
    return (*kept, *(status for status in hb.instances if status.remove_at_ms))


def _latest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("status listener failed", exc_info=task.exception())
