"""What agents tell the coordinator, applied to the instances: one handler per message kind (the handler
table the gateway dispatches on). Every transition is a guarded UPDATE, so a late or repeated report never
moves an instance backwards."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from common.logging import get
from coordinator.domain import agents
from coordinator.domain.lifecycle import Event
from coordinator.domain.records import WANTED_STATES, InstanceState, NodeStatus
from coordinator.service.core import Core
from coordinator.store import events as events_store
from coordinator.store import instances as instances_store
from coordinator.store import nodes as nodes_store
from coordinator.store.instances import Moved

log = get("coordinator.reports")

S = InstanceState
#: What the agent should have a container for (a suspended one too: stopped, but kept).
ACTIVE = set(WANTED_STATES)

MISSING = "the container is missing on the host; the agent re-creates it"
REMOVED = "the container was removed outside Moorage"
#: Instances nothing of which should run any more.
ENDED = frozenset({S.ERROR, S.RELEASED})


def _runs(status: agents.InstanceStatus | None) -> bool:
    return status is not None and status.runs


class AgentReports:
    def __init__(self, core: Core) -> None:
        self.core = core
        self._hooks: set[asyncio.Task[None]] = set()
        core.fleet.listeners.append(self.node_status_changed)

    async def _transition(self, instance_id: str, event: Event, **values: Any) -> Moved | None:
        async with self.core.store.write() as conn:
            return await instances_store.transition(conn, instance_id, event, now=self.core.clock(), **values)

    async def _removed(self, instance_id: str) -> None:
        """The container is gone: a releasing instance is released (its allocations freed); one that should
        exist was removed outside Moorage and keeps its ports (the agent re-creates it)."""
        async with self.core.store.write() as conn:
            moved = await instances_store.transition(conn, instance_id, Event.REMOVED, now=self.core.clock())
            if moved is not None and moved.new is S.UNHEALTHY:
                await instances_store.update_instance(conn, instance_id, self.core.clock(), error=REMOVED)
        if moved is not None and moved.new is S.RELEASED:
            self.core.fleet.forget_instance(instance_id)
        else:
            self.core.fleet.unconfirm(instance_id)

    async def _fail(self, node_id: str, instance_id: str, reason: str) -> None:
        """Provisioning failed. Before it ever ran: the instance is failed, its allocations freed, and the
        agent is told to drop it (no retry of something nobody wants). When re-creating the container of
        one that ran failed: it stays wanted and unhealthy with the reason, and the agent retries."""
        async with self.core.store.write() as conn:
            moved = await instances_store.transition(
                conn, instance_id, Event.FAILED, now=self.core.clock(), error=reason[:4000]
            )
            failed = await instances_store.get_instance(conn, instance_id) if moved else None
        if moved is None or failed is None:
            return
        self.core.fleet.unconfirm(instance_id)
        if moved.new is S.ERROR:
            log.warning("instance failed", instance_id=instance_id, error=reason)
            self.core.tell_remove(failed, wait=False, ended=True)

    # ------------------------------------------------------------ session start

    async def hello(self, node_id: str, hello: agents.Hello) -> agents.Welcome:
        """Take the agent's full truth and answer with the node's full desired set."""
        self.core.fleet.note_hello(node_id, hello)
        if self.core.cluster is not None:
            await self.core.cluster.hold(node_id)
        reported = {i.instance_id: i for i in hello.instances}
        async with self.core.store.read() as conn:
            node = await nodes_store.get_node(conn, node_id)
            on_node = await instances_store.list_instances(
                conn, node_id=node_id, states=ACTIVE | {S.RELEASING}
            )
            # Containers of instances that failed or were released while the agent was away: removed now,
            # not after the grace a container nobody knows gets.
            ended = await instances_store.ids_in_states(conn, node_id, list(reported), ENDED)
            if self.core.cluster is not None:
                # Another coordinator may have counted its bytes since this one last did.
                self.core.fleet.bandwidth.load(await instances_store.bandwidth_meters(conn, node_id))
        if node is not None and node.cpu_count == 0 and hello.cpu_count:
            # Created with a processor description and no core count: the agent's cores count (a read
            # first, so a reconnect storm writes nothing here).
            cores = min(hello.cpu_count, 4096)
            async with self.core.store.write() as conn:
                if await nodes_store.take_agent_cores(conn, node_id, cores, self.core.clock()):
                    self.core.placement_changed()
                    log.info("node cores from its agent", node_id=node_id, cores=cores)
        desired, remove = [], list(ended)
        for inst in on_node:
            if inst.state is S.RELEASING:
                remove.append(inst.id)
                self.core.fleet.removing.add(inst.id)
            else:
                desired.append(self.core.workload(inst))
        for inst in on_node:
            if inst.state is S.RELEASING and inst.id not in reported:
                await self._removed(inst.id)
            elif inst.state is S.RUNNING and _runs(reported.get(inst.id)):
                # Already known running (a reconnect, or a coordinator restart): nothing to write. A
                # reconnect storm of a whole fleet then costs reads, not a write per instance.
                self.core.fleet.confirm(node_id, inst.id)
            elif inst.state is S.RUNNING and inst.id not in reported:
                # Gone while nobody watched (removed while the agent or we were down): the agent re-creates
                # it from this Welcome; until a heartbeat shows it running again it is not running.
                await self._transition(inst.id, Event.FAULT, error=MISSING)
        beat = agents.Heartbeat(instances=hello.instances)
        self.note_heartbeat(node_id, beat)
        await self.heartbeat(node_id, beat)
        fleet = self.core.config.fleet
        return agents.Welcome(node_id, fleet.heartbeat_interval_s, desired, remove, fleet.full_report_every)

    # ------------------------------------------------------------ steady state

    def note_heartbeat(self, node_id: str, hb: agents.Heartbeat) -> None:
        """Liveness and metrics, in memory, the moment a heartbeat is read: never behind a database write."""
        self.core.fleet.record_heartbeat(node_id, hb)

    def _changes(
        self, node_id: str, hb: agents.Heartbeat
    ) -> Iterator[tuple[str, agents.InstanceStatus | None]]:
        """(instance id, status) for each report that changes the database: a container running that is not
        yet confirmed, one confirmed that no longer runs, or one confirmed that is gone altogether (status
        None). One running with a failing health check is none of these: it waits for its check."""
        confirmed = self.core.fleet.confirmed_running
        for status in hb.instances:
            if _runs(status):
                if status.instance_id not in confirmed:
                    yield status.instance_id, status
            elif status.state is not agents.ContainerState.RUNNING and status.instance_id in confirmed:
                yield status.instance_id, status
        for instance_id in self.core.fleet.vanished(node_id, hb):
            yield instance_id, None

    def needs_work(self, node_id: str, hb: agents.Heartbeat) -> bool:
        """Whether ``heartbeat`` would change anything in the database. Most heartbeats need nothing and
        skip the session worker altogether (checked in memory, as each is read)."""
        return next(self._changes(node_id, hb), None) is not None

    async def heartbeat(self, node_id: str, hb: agents.Heartbeat) -> None:
        """What a heartbeat changes in the database (rarely anything): a container confirmed running for
        the first time, or one we believed running that is not (it died or vanished while we were away)."""
        for instance_id, status in list(self._changes(node_id, hb)):
            if _runs(status):
                assert status is not None
                await self._confirm_running(node_id, status)
                continue
            self.core.fleet.unconfirm(instance_id)
            if status is None:
                reason = hb.engine_error or MISSING
            elif status.oom_killed:
                reason = "the container was OOM-killed"
            else:
                reason = f"the container is {status.state.value} (exit code {status.exit_code})"
            await self._transition(instance_id, Event.FAULT, error=reason)

    def _hook_done(self, task: asyncio.Task[None]) -> None:
        self._hooks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a running hook failed", error=str(task.exception()))

    async def _confirm_running(self, node_id: str, status: agents.InstanceStatus) -> None:
        async with self.core.store.read() as conn:
            known = await instances_store.get_instance(conn, status.instance_id)
        if known is None or known.state not in (S.STARTING, S.UNHEALTHY, S.RUNNING):
            return
        if known.state is S.RUNNING:
            self.core.fleet.confirm(node_id, known.id)
            return
        values: dict[str, Any] = {"error": None, "delivered_at": known.delivered_at or self.core.clock()}
        if status.container_id:
            values["container_id"] = status.container_id
        moved = await self._transition(known.id, Event.CONFIRMED, **values)
        if moved is None:
            return
        self.core.fleet.confirm(node_id, known.id)
        # After the commit, in their own task (this may be a Hello, whose Welcome must go first): hooks may
        # write (a redeploy's original is released once its replacement runs).
        for hook in self.core.running_hooks:
            task = asyncio.create_task(hook(known), name=f"running-hook-{known.id}")
            self._hooks.add(task)
            task.add_done_callback(self._hook_done)

    async def event(self, node_id: str, ev: agents.InstanceEvent) -> None:
        iid = ev.instance_id
        kind = ev.kind
        if kind is agents.EventKind.ACCEPTED:
            await self._transition(iid, Event.ACCEPTED)
        elif kind is agents.EventKind.CREATED:
            await self._transition(iid, Event.CREATED, container_id=ev.container_id)
        elif kind is agents.EventKind.STARTED:
            await self._transition(iid, Event.STARTED, container_id=ev.container_id)
        elif kind is agents.EventKind.FAILED:
            await self._fail(node_id, iid, ev.message or "the agent could not provision the instance")
        elif kind in (agents.EventKind.EXITED, agents.EventKind.OOM_KILLED):
            # The agent's message says what happened and when it restarts it (or that it is a crash loop).
            reason = ev.message or (
                "the container was OOM-killed"
                if kind is agents.EventKind.OOM_KILLED
                else f"the container exited with code {ev.exit_code}"
            )
            self.core.fleet.bandwidth.stopped([iid])
            # From unhealthy too: each crash of a loop updates the reason (and the next restart's time),
            # and each is an event of its own (a loop's later crashes change no state).
            now = self.core.clock()
            async with self.core.store.write() as conn:
                moved = await instances_store.transition(conn, iid, Event.FAULT, now=now, error=reason)
                if moved is not None:
                    crash = {
                        "error": reason,
                        "exitCode": ev.exit_code,
                        "oomKilled": kind is agents.EventKind.OOM_KILLED,
                        "state": moved.new.value,
                    }
                    await events_store.record_for_instance(conn, "instance.crashed", iid, at=now, data=crash)
            if moved:
                self.core.fleet.unconfirm(iid)
        elif kind is agents.EventKind.STOPPED:
            # A stop the coordinator asked for (stop, kill, suspend, or the first half of a restart): the
            # state already says what is wanted; only the confirmation and the byte rates go.
            self.core.fleet.bandwidth.stopped([iid])
            self.core.fleet.unconfirm(iid)
        elif kind is agents.EventKind.REMOVED:
            await self._removed(iid)

    async def result(self, node_id: str, result: agents.CommandResult) -> None:
        self.core.fleet.resolve(result)
        if not result.ok:
            log.warning("command failed", node_id=node_id, instance_id=result.instance_id, error=result.error)

    # ------------------------------------------------------------ node health

    async def node_status_changed(self, node_id: str, old: NodeStatus, new: NodeStatus) -> None:
        """A node that stops reporting makes its instances unhealthy; nothing is rescheduled (game servers
        keep state). They return to running on the next heartbeat that shows them running. Every change
        is an event (one coordinator judges a node: the one holding its session)."""
        now = self.core.clock()
        async with self.core.store.write() as conn:
            if new in (NodeStatus.HEARTBEAT_ABNORMAL, NodeStatus.OFFLINE) and old is NodeStatus.READY:
                found = await instances_store.list_instances(
                    conn, node_id=node_id, states={S.RUNNING, S.STARTING}
                )
                for inst in sorted(found, key=lambda i: i.id):  # instance locks in id order
                    await instances_store.transition(
                        conn,
                        inst.id,
                        Event.FAULT,
                        now=now,
                        error=f"node {node_id} stopped sending heartbeats",
                    )
                    self.core.fleet.unconfirm(inst.id)
                    self.core.fleet.bandwidth.stopped([inst.id])
            await events_store.record_node_status(conn, node_id, old.value, new.value, now)
        if new in (NodeStatus.HEARTBEAT_ABNORMAL, NodeStatus.OFFLINE) and old is NodeStatus.READY:
            # Its instances are unhealthy now; partial heartbeats would not show them running again (they
            # did not change on the host): the next heartbeat to reach us must be a full one.
            self.core.fleet.request_report(node_id)
