"""Carries out what the coordinator wants on this host: commands as they arrive and the reconcile plan
after every Welcome. Work on one instance is serialised (a lock per instance), work on different instances
runs concurrently. Every step reports an InstanceEvent, so the coordinator follows the lifecycle."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agent import shaping
from agent.files import FileStore
from agent.reconcile import Act, Action, Desired, plan
from agent.restarts import RestartPolicy, describe, on_crash
from agent.runtime.base import (
    LABEL_INSTANCE,
    ContainerInfo,
    ContainerNotFound,
    ContainerSpec,
    ContainerStatus,
    FileSet,
    PortBinding,
    PullPolicy,
    Runtime,
    RuntimeFailure,
)
from agent.shaping import Shaper
from common.logging import get
from protos import moorage_pb2 as pb

log = get("agent.instances")

Emit = Callable[[pb.InstanceEvent], None]

CONTAINER_STATE = {
    ContainerStatus.CREATED: pb.CONTAINER_STATE_CREATED,
    ContainerStatus.RUNNING: pb.CONTAINER_STATE_RUNNING,
    ContainerStatus.PAUSED: pb.CONTAINER_STATE_PAUSED,
    ContainerStatus.RESTARTING: pb.CONTAINER_STATE_RESTARTING,
    ContainerStatus.EXITED: pb.CONTAINER_STATE_EXITED,
    ContainerStatus.DEAD: pb.CONTAINER_STATE_DEAD,
    ContainerStatus.REMOVING: pb.CONTAINER_STATE_DEAD,
}


def to_spec(node_id: str, spec: pb.InstanceSpec) -> ContainerSpec:
    return ContainerSpec(
        instance_id=spec.instance_id,
        node_id=node_id,
        name=spec.name,
        image=spec.image,
        env=dict(spec.env),
        memory_mib=spec.memory_mib,
        cpu_percent=spec.cpu_percent,
        ports=tuple(PortBinding(p.bind_address, p.port) for p in spec.ports),
        command=tuple(spec.command),
        stop_signal=spec.stop_signal or "SIGTERM",
        stop_timeout_s=spec.stop_timeout_s or 10,
        labels=dict(spec.labels),
        files=tuple(FileSet(f.target_dir, dict(f.contents)) for f in spec.files),
        bandwidth_mbps=spec.bandwidth_mbps,
    )


def event(kind: pb.EventKind.ValueType, instance_id: str, **fields: object) -> pb.InstanceEvent:
    return pb.InstanceEvent(instance_id=instance_id, kind=kind, at_ms=int(time.time() * 1000), **fields)  # type: ignore[arg-type]


#: Commands that carry the instance's desired state for the agent to converge to (restart and kill stop
#: it first, without or with grace).
CONVERGING = frozenset(
    {
        pb.COMMAND_KIND_DEPLOY,
        pb.COMMAND_KIND_START,
        pb.COMMAND_KIND_STOP,
        pb.COMMAND_KIND_SUSPEND,
        pb.COMMAND_KIND_RESTART,
        pb.COMMAND_KIND_KILL,
    }
)


@dataclass
class InstanceManager:
    runtime: Runtime
    node_id: str
    pull_policy: PullPolicy
    emit: Emit
    unknown_grace_s: float = 300.0
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)
    #: Where instances' files are written for their mounts (agent/files.py); None: instances with files fail.
    files: FileStore | None = None
    #: Sets a bandwidth cap on a running container (by its pid); tests without Docker pass their own.
    shaper: Shaper = shaping.cap
    #: Why an instance's bandwidth cap is not in force (reported in heartbeats).
    limit_errors: dict[str, str] = field(default_factory=dict)
    desired: dict[str, Desired] = field(default_factory=dict)
    #: Instances we are stopping or removing on purpose: their "die" is not a crash.
    expected_exit: set[str] = field(default_factory=set)
    #: Crash restarts this agent made, per instance (reported in heartbeats).
    restarts: dict[str, int] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _unknown_first_seen: dict[str, float] = field(default_factory=dict)
    _crashes_in_a_row: dict[str, int] = field(default_factory=dict)
    #: When each container was last started (unix seconds): how long it ran decides the back-off.
    _started_at: dict[str, float] = field(default_factory=dict)
    _oom: set[str] = field(default_factory=set)
    _pending_restarts: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    #: Whether a Welcome said what is wanted (before it, nothing is removed as unwanted).
    welcomed: bool = False

    def _lock(self, instance_id: str) -> asyncio.Lock:
        return self._locks.setdefault(instance_id, asyncio.Lock())

    async def actual(self) -> dict[str, ContainerInfo]:
        return {c.instance_id: c for c in await self.runtime.list(self.node_id) if c.instance_id}

    # ------------------------------------------------------------ commands

    async def handle(self, cmd: pb.Command) -> pb.CommandResult:
        """Apply one command. Idempotent: a redelivered deploy finds its container, a redelivered remove
        finds nothing to remove; both answer ok."""
        iid = cmd.instance_id
        try:
            async with self._lock(iid):
                if cmd.kind in CONVERGING:
                    # Deploy, start, stop and suspend all say "this is the instance, in this state": one
                    # idempotent path creates what is missing and starts or stops what differs.
                    want = Desired(
                        to_spec(self.node_id, cmd.spec), cmd.spec.desired_state != pb.DESIRED_STATE_STOPPED
                    )
                    self.desired[iid] = want
                    if cmd.kind == pb.COMMAND_KIND_RESTART:
                        await self._stop(iid, want.spec.stop_timeout_s)
                    elif cmd.kind == pb.COMMAND_KIND_KILL:
                        await self._stop(iid, 0)
                    container_id = await self._deploy(want)
                    return pb.CommandResult(
                        command_id=cmd.command_id, instance_id=iid, ok=True, container_id=container_id or ""
                    )
                if cmd.kind == pb.COMMAND_KIND_REMOVE:
                    self._forget(iid)
                    await self._remove(iid)
                    return pb.CommandResult(command_id=cmd.command_id, instance_id=iid, ok=True)
                return pb.CommandResult(
                    command_id=cmd.command_id,
                    instance_id=iid,
                    ok=False,
                    error=f"command {pb.CommandKind.Name(cmd.kind)} is not supported by this agent",
                )
        except Exception as exc:
            log.warning("command failed", instance_id=iid, kind=pb.CommandKind.Name(cmd.kind), error=str(exc))
            return pb.CommandResult(command_id=cmd.command_id, instance_id=iid, ok=False, error=str(exc))

    async def _find(self, instance_id: str) -> ContainerInfo | None:
        for c in await self.runtime.list(self.node_id):
            if c.labels.get(LABEL_INSTANCE) == instance_id:
                return c
        return None

    async def _deploy(self, want: Desired) -> str | None:
        """Pull, create and (if wanted) start; an existing container is adopted, not duplicated. A failure
        is reported as FAILED with the engine's own words."""
        iid = want.spec.instance_id
        existing = await self._find(iid)
        if existing is not None:
            await self._converge(want, existing)
            return existing.container_id
        self.emit(event(pb.EVENT_KIND_ACCEPTED, iid))
        try:
            await self.runtime.ensure_image(want.spec.image, self.pull_policy)
            spec = await self._with_files(want.spec)
            container_id = await self.runtime.create(spec)
        except RuntimeFailure as exc:
            await self._failed(iid, str(exc))
            raise
        self.emit(event(pb.EVENT_KIND_CREATED, iid, container_id=container_id))
        if want.running:
            try:
                await self.runtime.start(container_id)
            except RuntimeFailure as exc:
                # e.g. the port is bound by something else on the host: nothing runs, say why, clean up.
                await self.runtime.remove(container_id)
                await self._failed(iid, str(exc))
                raise
            await self._shape(iid, container_id)
            self._started(iid, container_id)
        if iid not in self.desired:
            # Dropped while it was being made (a Welcome without it arrived meanwhile): none of it stays.
            log.info("removing a container made for an instance no longer wanted", instance_id=iid)
            await self._remove(iid)
            return None
        return container_id

    async def _failed(self, instance_id: str, why: str) -> None:
        """Provisioning failed and nothing of it is left on the host. Tried again with the crash back-off
        while the coordinator still wants it: it answers a failure of something it no longer wants (a
        deploy that never ran) with a removal, which ends the retries."""
        self.emit(event(pb.EVENT_KIND_FAILED, instance_id, message=why))
        await self._drop_files(instance_id)
        if instance_id in self.desired and self.restart_policy.enabled:
            failure = on_crash(self.restart_policy, self._crashes_in_a_row.get(instance_id, 0), 0.0)
            self._crashes_in_a_row[instance_id] = failure.in_a_row
            log.info("deploy failed", instance_id=instance_id, retry_in_s=failure.delay_s, error=why)
            self._schedule_restart(instance_id, failure.delay_s)

    def _forget(self, instance_id: str) -> None:
        """Not wanted any more: out of the desired set, and a retry or restart still waiting is cancelled.
        One already at work (it holds the instance's lock) finishes, finds it unwanted and removes what it
        made; one waiting behind another holder of the lock finds it unwanted and does nothing."""
        self.desired.pop(instance_id, None)
        pending = self._pending_restarts.get(instance_id)
        if (
            pending is not None
            and pending is not asyncio.current_task()
            and not self._lock(instance_id).locked()
        ):
            del self._pending_restarts[instance_id]
            pending.cancel()

    async def _with_files(self, spec: ContainerSpec) -> ContainerSpec:
        if not spec.files:
            return spec
        if self.files is None:
            raise RuntimeFailure("this agent has no directory for instance files")
        files = self.files
        try:
            return await asyncio.to_thread(files.materialize, spec)
        except (OSError, ValueError) as exc:
            raise RuntimeFailure(f"cannot write the instance's files: {exc}") from exc

    async def _shape(self, instance_id: str, container_id: str) -> None:
        """Set the instance's bandwidth cap in the container's fresh namespace; when that fails the container
        still runs (it is not the tenant's fault), and the heartbeats say why it is uncapped."""
        want = self.desired.get(instance_id)
        mbps = want.spec.bandwidth_mbps if want is not None else 0
        if mbps <= 0:
            self.limit_errors.pop(instance_id, None)
            return
        try:
            info = await self.runtime.inspect(container_id)
            await self.shaper(info.netns, mbps)
        except (RuntimeFailure, shaping.ShapingError, OSError) as exc:
            message = f"bandwidth cap of {mbps} Mbps not in force: {exc}"
            self.limit_errors[instance_id] = message
            log.warning("bandwidth cap not set", instance_id=instance_id, error=str(exc))
        else:
            self.limit_errors.pop(instance_id, None)

    async def _drop_files(self, instance_id: str) -> None:
        """A failed or removed instance's files (its keys) do not stay on the host."""
        if self.files is not None:
            await asyncio.to_thread(self.files.remove, instance_id)

    async def _stop(self, instance_id: str, timeout_s: int) -> None:
        """Stop the container if it runs (a kill is a stop with no grace)."""
        have = await self._find(instance_id)
        if have is not None and have.status in (ContainerStatus.RUNNING, ContainerStatus.RESTARTING):
            await self._stop_container(instance_id, have, timeout_s)

    async def _stop_container(self, instance_id: str, have: ContainerInfo, timeout_s: int) -> None:
        """A stop we asked for: its exit is expected, not a crash."""
        self.expected_exit.add(instance_id)
        await self.runtime.stop(have.container_id, timeout_s)
        self.emit(event(pb.EVENT_KIND_STOPPED, instance_id, container_id=have.container_id))

    async def _converge(self, want: Desired, have: ContainerInfo) -> None:
        iid = want.spec.instance_id
        running = have.status in (ContainerStatus.RUNNING, ContainerStatus.RESTARTING)
        if want.running and not running:
            await self.runtime.start(have.container_id)
            await self._shape(iid, have.container_id)
            self._started(iid, have.container_id)
        elif not want.running and running:
            await self._stop_container(iid, have, want.spec.stop_timeout_s)
        elif running:
            # Already as wanted (adopted, or a redelivered deploy): let the coordinator catch up. The cap is
            # set again (idempotent): an agent restart forgot whether it was, an older agent never set it.
            await self._shape(iid, have.container_id)
            self._started_at.setdefault(iid, have.started_at or time.time())
            self.emit(event(pb.EVENT_KIND_STARTED, iid, container_id=have.container_id))
        else:
            self.emit(event(pb.EVENT_KIND_CREATED, iid, container_id=have.container_id))

    async def _remove(self, instance_id: str) -> None:
        have = await self._find(instance_id)
        if have is not None:
            self.expected_exit.add(instance_id)
            spec = self.desired.get(instance_id)
            timeout = spec.spec.stop_timeout_s if spec else 10
            try:
                if have.status in (ContainerStatus.RUNNING, ContainerStatus.RESTARTING):
                    await self.runtime.stop(have.container_id, timeout)
                await self.runtime.remove(have.container_id)
            except ContainerNotFound:
                pass
        for record in (self.restarts, self._crashes_in_a_row, self._started_at, self.limit_errors):
            record.pop(instance_id, None)
        await self._drop_files(instance_id)
        self.emit(event(pb.EVENT_KIND_REMOVED, instance_id, container_id=have.container_id if have else ""))

    # ------------------------------------------------------------ reconcile

    def removal_time(self, instance_id: str) -> float | None:
        """When a labelled container nobody wants will be removed (None for a wanted one)."""
        first = self._unknown_first_seen.get(instance_id)
        return None if first is None or instance_id in self.desired else first + self.unknown_grace_s

    async def reconcile(self, welcome: pb.Welcome) -> None:
        """The Welcome's desired set becomes exactly the agent's: what it lacks is dropped (no retry of it is
        left), what runs as wanted is adopted, what is missing created, what was released removed.
        Instances waiting out a failure's back-off are left to it."""
        wanted = {
            s.instance_id: Desired(to_spec(self.node_id, s), s.desired_state != pb.DESIRED_STATE_STOPPED)
            for s in welcome.desired
        }
        for iid in set(self.desired) - set(wanted):
            self._forget(iid)
        self.desired = wanted
        self.welcomed = True
        actual = await self.actual()
        now = time.time()
        for iid in actual:
            if iid not in self.desired:
                self._unknown_first_seen.setdefault(iid, now)
        remove = set(welcome.remove)
        actions = [
            a
            for a in plan(self.desired, remove, actual, self._unknown_first_seen, now, self.unknown_grace_s)
            if a.instance_id in remove or a.instance_id not in self._pending_restarts
        ]
        await asyncio.gather(*(self._apply(a) for a in actions))

    async def resync(self) -> None:
        """Between Welcomes (periodically, and after the engine came back): close the gap between the desired
        set and what the engine has. Containers nobody wants are removed once past their grace; crashed
        or failed ones waiting out their back-off are left to it; what already runs as wanted is not
        re-reported. Nothing happens before the first Welcome: until then the agent does not know what is
        wanted, and every container would look unwanted."""
        if not self.welcomed:
            return
        actual = await self.actual()
        now = time.time()
        for iid in actual:
            if iid not in self.desired:
                self._unknown_first_seen.setdefault(iid, now)
        for iid in list(self._unknown_first_seen):
            if iid not in actual or iid in self.desired:
                del self._unknown_first_seen[iid]
        actions = [
            a
            for a in plan(self.desired, set(), actual, self._unknown_first_seen, now, self.unknown_grace_s)
            if a.act is not Act.ADOPT and a.instance_id not in self._pending_restarts
        ]
        if actions:
            log.info("resync", actions=[f"{a.act.value}:{a.instance_id}" for a in actions])
        await asyncio.gather(*(self._apply(a) for a in actions))

    async def _apply(self, action: Action) -> None:
        iid = action.instance_id
        try:
            async with self._lock(iid):
                if action.act is Act.DEPLOY and iid in self.desired:
                    await self._deploy(self.desired[iid])
                elif action.act in (Act.START, Act.STOP, Act.ADOPT) and iid in self.desired:
                    have = await self._find(iid)
                    if have is not None:
                        await self._converge(self.desired[iid], have)
                elif action.act in (Act.REMOVE, Act.REPORT_REMOVED):
                    self._forget(iid)
                    await self._remove(iid)
                elif action.act is Act.REMOVE_UNKNOWN and iid not in self.desired:  # wanted since the plan?
                    log.warning(
                        "removing a container nobody wants", instance_id=iid, container_id=action.container_id
                    )
                    await self._remove(iid)
                    self._unknown_first_seen.pop(iid, None)
        except Exception as exc:
            log.warning("reconcile step failed", instance_id=iid, act=action.act.value, error=str(exc))

    # ------------------------------------------------------------ engine events

    def _started(self, instance_id: str, container_id: str, message: str = "") -> None:
        self._started_at[instance_id] = time.time()
        self.emit(event(pb.EVENT_KIND_STARTED, instance_id, container_id=container_id, message=message))

    def on_container_event(self, kind: str, instance_id: str, exit_code: int, container_id: str) -> None:
        """Map an engine event to an InstanceEvent. An exit we caused is a stop, not a crash; a crash of a
        container that should run is reported with its reason and restarted after a back-off."""
        if kind == "oom":
            # The engine says "oom" and then "die": one crash, reported once, with the better reason.
            self._oom.add(instance_id)
            return
        if kind != "exited":
            return
        if instance_id in self.expected_exit:
            self.expected_exit.discard(instance_id)
            self._oom.discard(instance_id)
            return
        oom = instance_id in self._oom
        self._oom.discard(instance_id)
        what = "the container was OOM-killed" if oom else f"the container exited with code {exit_code}"
        want = self.desired.get(instance_id)
        restart = self.restart_policy.enabled and want is not None and want.running
        message = what
        if restart:
            ran_for = time.time() - self._started_at.get(instance_id, 0.0)
            crash = on_crash(self.restart_policy, self._crashes_in_a_row.get(instance_id, 0), ran_for)
            self._crashes_in_a_row[instance_id] = crash.in_a_row
            message = describe(crash, what)
            if crash.loop:
                log.warning("crash loop", instance_id=instance_id, in_a_row=crash.in_a_row, reason=what)
            self._schedule_restart(instance_id, crash.delay_s)
        kind_pb = pb.EVENT_KIND_OOM_KILLED if oom else pb.EVENT_KIND_EXITED
        self.emit(
            event(kind_pb, instance_id, exit_code=exit_code, container_id=container_id, message=message)
        )

    def _schedule_restart(self, instance_id: str, delay_s: float) -> None:
        old = self._pending_restarts.pop(instance_id, None)
        if old is not None and old is not asyncio.current_task():  # a retry that failed schedules the next
            old.cancel()
        task = asyncio.get_running_loop().create_task(self._restart_later(instance_id, delay_s))
        self._pending_restarts[instance_id] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._pending_restarts.get(instance_id) is done:
                del self._pending_restarts[instance_id]

        task.add_done_callback(forget)

    async def _restart_later(self, instance_id: str, delay_s: float) -> None:
        """After the back-off, start it again if it is still wanted and still does not run (a stop, remove or
        manual start meanwhile wins); a container that failed to be made, or was removed behind our back,
        is made again."""
        await asyncio.sleep(delay_s)
        try:
            async with self._lock(instance_id):
                want = self.desired.get(instance_id)
                if want is None:
                    return
                have = await self._find(instance_id)
                if have is None:
                    await self._deploy(want)
                    return
                if not want.running or have.status in (ContainerStatus.RUNNING, ContainerStatus.RESTARTING):
                    return
                self.restarts[instance_id] = self.restarts.get(instance_id, 0) + 1
                n = self._crashes_in_a_row.get(instance_id, 0)
                await self.runtime.start(have.container_id)
                await self._shape(instance_id, have.container_id)
                self._started(instance_id, have.container_id, message=f"restarted after crash {n} in a row")
                log.info("restarted after a crash", instance_id=instance_id, in_a_row=n)
        except Exception as exc:
            log.warning("restart after crash failed", instance_id=instance_id, error=str(exc))

    async def close(self) -> None:
        """Cancel pending restarts (the agent is stopping; the next one reconciles)."""
        tasks = list(self._pending_restarts.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
