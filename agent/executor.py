"""Performs what the state machine (agent/state.py) decides, against the container engine, and feeds what
happened back to it as events. Work on one instance is serialised (a lock per instance) and every step reads
what is wanted again under that lock, so a newer Welcome or command wins over an older step still running;
work on different instances runs concurrently. Crash and failure retries wait in timers of their own."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Set
from dataclasses import dataclass

from agent import shaping
from agent import state as machine
from agent.files import FileStore
from agent.reconcile import RUNNING, Desired
from agent.restarts import RestartPolicy
from agent.runtime.base import (
    ContainerInfo,
    ContainerNotFound,
    ContainerSpec,
    ContainerStatus,
    PullPolicy,
    Runtime,
    RuntimeFailure,
)
from agent.shaping import Shaper
from common.logging import get

log = get("agent.executor")

#: Containers whose removal makes the engine report an exit.
STOPPABLE = frozenset({ContainerStatus.RUNNING, ContainerStatus.RESTARTING, ContainerStatus.PAUSED})


@dataclass(frozen=True, slots=True)
class Outcome:
    """A command's answer."""

    ok: bool
    error: str = ""
    container_id: str = ""


class Executor:
    def __init__(
        self,
        runtime: Runtime,
        node_id: str,
        pull_policy: PullPolicy,
        report: Callable[[machine.Report], None],
        *,
        unknown_grace_s: float = 300.0,
        restart_policy: RestartPolicy | None = None,
        files: FileStore | None = None,
        shaper: Shaper = shaping.cap,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.runtime = runtime
        self.node_id = node_id
        self.pull_policy = pull_policy
        #: Where instance events go (the session's outbox).
        self.report = report
        self.state = machine.AgentState(restart_policy or RestartPolicy(), unknown_grace_s)
        #: Where instances' files are written for their mounts; None: instances with files fail.
        self.files = files
        #: Sets a bandwidth cap on a running container (by its namespace); tests without Docker pass theirs.
        self.shaper = shaper
        self.clock = clock
        #: How a retry waits out its back-off (tests move time by hand).
        self.sleep = sleep
        #: Why an instance's bandwidth cap is not in force (reported in heartbeats).
        self.limit_errors: dict[str, str] = {}
        #: Per instance: its lock and how many hold or wait for it (the entry goes when none do).
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        #: Retries waiting out their back-off (a retry that woke is no longer here: it is not cancelled).
        self._timers: dict[str, asyncio.Task[None]] = {}
        #: Every retry task, waiting or at work (stopped on close).
        self._retries: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ what the session and main call

    async def command(self, order: machine.Order, instance_id: str, want: Desired | None) -> Outcome:
        """Apply one command. Idempotent: a redelivered deploy finds its container, a redelivered remove
        finds nothing to remove; both answer ok."""
        try:
            container_id: str | None = None
            # Taken in arrival order under the instance's lock: a deploy still at work finishes before a
            # removal behind it changes what is wanted.
            async with self._lock(instance_id):
                for action in self._feed(machine.Commanded(order, instance_id, want, self.clock())):
                    container_id = await self._perform_locked(action)
            return Outcome(True, container_id=container_id or "")
        except Exception as exc:
            log.warning("command failed", instance_id=instance_id, kind=order.value, error=str(exc))
            return Outcome(False, error=str(exc))

    async def reconcile(self, desired: Mapping[str, Desired], remove: Set[str]) -> None:
        """The Welcome's desired set becomes exactly the agent's at once (even if the engine does not answer
        now: the resync after it comes back converges); then the gap to the engine is closed."""
        self._feed(machine.Welcomed(desired, remove, self.clock()))
        actual = await self.actual()
        await self._perform_all(self._feed(machine.Listed(actual, self.clock(), remove, readopt=True)))

    async def resync(self) -> None:
        """Between Welcomes (periodically, and after the engine came back): close the gap again."""
        if not self.state.welcomed:
            return
        actions = self._feed(machine.Listed(await self.actual(), self.clock()))
        if actions:
            log.info("resync", actions=[f"{type(a).__name__.lower()}:{a.instance_id}" for a in actions])
        await self._perform_all(actions)

    def on_engine_event(self, kind: str, instance_id: str, exit_code: int, container_id: str) -> None:
        if kind == "oom":
            self._feed(machine.OomKilled(instance_id))
        elif kind == "exited":
            self._feed(machine.Exited(instance_id, exit_code, container_id, self.clock()))

    async def actual(self) -> dict[str, ContainerInfo]:
        return {c.instance_id: c for c in await self.runtime.list(self.node_id) if c.instance_id}

    def restarts(self, instance_id: str) -> int:
        return self.state.restarts(instance_id)

    def removal_time(self, instance_id: str) -> float | None:
        return self.state.removal_time(instance_id)

    async def close(self) -> None:
        """Stop every retry, waiting or at work (the agent is stopping; the next one reconciles)."""
        retries = list(self._retries)
        for task in retries:
            task.cancel()
        await asyncio.gather(*retries, return_exceptions=True)

    # ------------------------------------------------------------ the loop between state and engine

    def _feed(self, event: machine.Event) -> list[machine.Action]:
        """Hand an event to the state machine; reports and timers are dealt with at once, the engine work
        is given back to perform."""
        work: list[machine.Action] = []
        for action in self.state.handle(event):
            if isinstance(action, machine.Report):
                if action.crash_loop:
                    log.warning("crash loop", instance_id=action.instance_id, reason=action.message)
                self.report(action)
            elif isinstance(action, machine.ScheduleRetry):
                self._schedule(action.instance_id, action.delay_s)
            elif isinstance(action, machine.CancelRetry):
                timer = self._timers.pop(action.instance_id, None)
                if timer is not None:
                    timer.cancel()
            else:
                work.append(action)
        return work

    async def _perform_all(self, actions: list[machine.Action]) -> None:
        async def one(action: machine.Action) -> None:
            try:
                await self._perform(action)
            except Exception as exc:
                log.warning("reconcile step failed", instance_id=action.instance_id, error=str(exc))

        await asyncio.gather(*(one(a) for a in actions))

    async def _perform(self, action: machine.Action) -> str | None:
        async with self._lock(action.instance_id):
            return await self._perform_locked(action)

    async def _perform_locked(self, action: machine.Action) -> str | None:
        if isinstance(action, machine.Apply):
            return await self._apply(action)
        if isinstance(action, machine.Remove):
            await self._remove(action.instance_id)
        elif isinstance(action, machine.RemoveUnknown) and self.state.want(action.instance_id) is None:
            log.warning(
                "removing a container nobody wants",
                instance_id=action.instance_id,
                container_id=action.container_id,
            )
            await self._remove(action.instance_id)
        return None

    @contextlib.asynccontextmanager
    async def _lock(self, instance_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(instance_id) or (asyncio.Lock(), 0)
        self._locks[instance_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[instance_id]
            if users == 1:
                del self._locks[instance_id]
            else:
                self._locks[instance_id] = (lock, users - 1)

    def _schedule(self, instance_id: str, delay_s: float) -> None:
        old = self._timers.pop(instance_id, None)
        if old is not None:
            old.cancel()
        task = asyncio.get_running_loop().create_task(self._retry(instance_id, delay_s))
        self._timers[instance_id] = task
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _retry(self, instance_id: str, delay_s: float) -> None:
        await self.sleep(delay_s)
        if self._timers.get(instance_id) is asyncio.current_task():
            del self._timers[instance_id]  # awake: from here on it is work, not a wait to cancel
        try:
            for action in self._feed(machine.RetryDue(instance_id, self.clock())):
                await self._perform(action)
        except Exception as exc:
            log.warning("retry failed", instance_id=instance_id, error=str(exc))
        finally:
            self._feed(machine.RetryDone(instance_id))

    # ------------------------------------------------------------ engine work (under the instance's lock)

    async def _find(self, instance_id: str) -> ContainerInfo | None:
        return await self.runtime.find(self.node_id, instance_id)

    async def _apply(self, action: machine.Apply) -> str | None:
        iid = action.instance_id
        want = self.state.want(iid)
        if want is None:
            return None
        have = await self._find(iid)
        if have is not None and action.stop_first is not machine.Stop.NONE and have.status in RUNNING:
            timeout = 0 if action.stop_first is machine.Stop.KILL else want.spec.stop_timeout_s
            await self._stop_container(iid, have, timeout)
            have = await self._find(iid)
        if have is None:
            return await self._create(want)
        running = have.status in RUNNING
        if want.running and not running:
            await self.runtime.start(have.container_id)
            await self._shape(iid, have.container_id)
            self._feed(machine.Started(iid, have.container_id, self.clock(), after_crash=action.after_crash))
        elif not want.running and running:
            await self._stop_container(iid, have, want.spec.stop_timeout_s)
        elif not action.after_crash:  # a retry that finds it as wanted (a start came first) says nothing
            if running:
                # The cap is set again (idempotent): an agent restart forgot whether it was.
                await self._shape(iid, have.container_id)
            self._feed(machine.Adopted(iid, have.container_id, running, have.started_at, self.clock()))
        return have.container_id

    async def _create(self, want: Desired) -> str | None:
        """Pull, create and (if wanted) start. A failure is reported with the engine's own words, and
        nothing of it stays on the host."""
        iid = want.spec.instance_id
        self._feed(machine.Accepted(iid))
        try:
            await self.runtime.ensure_image(want.spec.image, self.pull_policy)
            spec = await self._with_files(want.spec)
            container_id = await self.runtime.create(spec)
        except RuntimeFailure as exc:
            await self._fail(iid, str(exc))
            raise
        self._feed(machine.Made(iid, container_id))
        if want.running:
            try:
                await self.runtime.start(container_id)
            except RuntimeFailure as exc:
                # e.g. the port is bound by something else on the host: nothing runs, say why, clean up.
                await self.runtime.remove(container_id)
                await self._fail(iid, str(exc))
                raise
            await self._shape(iid, container_id)
            self._feed(machine.Started(iid, container_id, self.clock()))
        if self._feed(machine.Finished(iid)):
            log.info("removing a container made for an instance no longer wanted", instance_id=iid)
            await self._remove(iid)
            return None
        return container_id

    async def _fail(self, instance_id: str, why: str) -> None:
        await self._drop_files(instance_id)
        log.info("deploy failed", instance_id=instance_id, error=why)
        self._feed(machine.Failed(instance_id, why, self.clock()))

    async def _stop_container(self, instance_id: str, have: ContainerInfo, timeout_s: int) -> None:
        self._feed(machine.StopIssued(instance_id))
        await self.runtime.stop(have.container_id, timeout_s)
        self._feed(machine.Stopped(instance_id, have.container_id))

    async def _remove(self, instance_id: str) -> None:
        have = await self._find(instance_id)
        if have is not None:
            try:
                if have.status in STOPPABLE:
                    # Its "die" (which may come after the removal) is expected, not a crash.
                    self._feed(machine.StopIssued(instance_id))
                if have.status in RUNNING:
                    want = self.state.want(instance_id)
                    await self.runtime.stop(have.container_id, want.spec.stop_timeout_s if want else 10)
                await self.runtime.remove(have.container_id)
            except ContainerNotFound:
                pass
        self.limit_errors.pop(instance_id, None)
        await self._drop_files(instance_id)
        self._feed(machine.Removed(instance_id, have.container_id if have else ""))

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

    async def _drop_files(self, instance_id: str) -> None:
        """A failed or removed instance's files (its keys) do not stay on the host."""
        if self.files is not None:
            await asyncio.to_thread(self.files.remove, instance_id)

    async def _shape(self, instance_id: str, container_id: str) -> None:
        """Set the instance's bandwidth cap in the container's fresh namespace; when that fails the container
        still runs (it is not the tenant's fault), and the heartbeats say why it is uncapped."""
        want = self.state.want(instance_id)
        mbps = want.spec.bandwidth_mbps if want is not None else 0
        if mbps <= 0:
            self.limit_errors.pop(instance_id, None)
            return
        try:
            info = await self.runtime.inspect(container_id)
            await self.shaper(info.netns, mbps)
        except (RuntimeFailure, shaping.ShapingError, OSError) as exc:
            self.limit_errors[instance_id] = f"bandwidth cap of {mbps} Mbps not in force: {exc}"
            log.warning("bandwidth cap not set", instance_id=instance_id, error=str(exc))
        else:
            self.limit_errors.pop(instance_id, None)
