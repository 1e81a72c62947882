"""The agent's instance state machine, in the manner of dask's WorkerState: ``handle(event) -> [actions]``
over plain data. No asyncio, no Docker and no clock of its own (every event carries its time), so every
decision is a unit test and a hypothesis property.

What it decides: which instances are wanted and how (the Welcome's set plus commands, exactly); what a
Welcome or a resync must do about the gap to what the engine has (reconcile.plan); whether an exit is a
crash, how it is reported and when the container starts again (restarts.on_crash); when a failed deploy is
tried again; that a container made for an instance dropped meanwhile is removed again; what each report
says. The executor (agent/executor.py) performs the actions and feeds what happened back as events.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field
from typing import Any

from agent.reconcile import Act, Desired, plan
from agent.restarts import RestartPolicy, describe, on_crash
from agent.runtime.base import ContainerInfo

# ------------------------------------------------------------------ what the coordinator asks


class Order(enum.Enum):
    """A command's kind. Every kind but REMOVE carries the instance's whole desired state."""

    DEPLOY = "deploy"
    START = "start"
    STOP = "stop"
    SUSPEND = "suspend"
    RESTART = "restart"  # stop with grace, then converge
    KILL = "kill"  # stop without grace, then converge
    REMOVE = "remove"


@dataclass(frozen=True, slots=True)
class OneInstance:
    """An event or action about one instance (the classes below say which)."""

    instance_id: str


@dataclass(frozen=True, slots=True)
class OneContainer(OneInstance):
    """... and one of its containers."""

    container_id: str


# ------------------------------------------------------------------ events (inputs)


@dataclass(frozen=True, slots=True)
class Welcomed:
    """A session began: ``desired`` is now exactly the wanted set, at once (before the engine is asked what
    it has: a command right behind the Welcome must find it in force); ``remove`` were released."""

    desired: Mapping[str, Desired]
    remove: Set[str]
    now: float


@dataclass(frozen=True, slots=True)
class Listed:
    """What the engine has, listed after a Welcome (``readopt``: what is already as wanted is reported
    again, so the coordinator's states converge; ``remove``: the Welcome's releases) or by a resync."""

    actual: Mapping[str, ContainerInfo]
    now: float
    remove: Set[str] = frozenset()
    readopt: bool = False


@dataclass(frozen=True, slots=True)
class Commanded:
    order: Order
    instance_id: str
    want: Desired | None
    now: float


@dataclass(frozen=True, slots=True)
class Exited:
    instance_id: str
    exit_code: int
    container_id: str
    now: float


class OomKilled(OneInstance):
    """The engine says "oom", then "die": one crash, reported once, with the better reason."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class RetryDue:
    """A retry's back-off is over: it is at work until RetryDone (and shields its instance meanwhile)."""

    instance_id: str
    now: float


class RetryDone(OneInstance):
    """The retry's work is over (done or failed)."""

    __slots__ = ()


# What the executor did, fed back.


class Accepted(OneInstance):
    """A container is being made for the instance (none existed)."""

    __slots__ = ()


class Made(OneContainer):
    """A container was created for the instance."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Started:
    instance_id: str
    container_id: str
    now: float
    #: Started again by a crash retry (counted as a restart).
    after_crash: bool = False


@dataclass(frozen=True, slots=True)
class Adopted:
    """A container already there, left as it is: running as wanted, or created and stopped as wanted."""

    instance_id: str
    container_id: str
    running: bool
    started_at: float
    now: float


@dataclass(frozen=True, slots=True)
class Failed:
    """Provisioning failed; nothing of it is left on the host."""

    instance_id: str
    why: str
    now: float


class StopIssued(OneInstance):
    """Sent before the executor stops a running container: its exit is then expected, not a crash (the
    engine's "die" may arrive before the stop call returns)."""

    __slots__ = ()


class Stopped(OneContainer):
    """A container we stopped has stopped."""

    __slots__ = ()


class Finished(OneInstance):
    """An Apply that made a new container is done."""

    __slots__ = ()


class Removed(OneContainer):
    """The instance's container is gone (or there was none)."""

    __slots__ = ()


Event = (
    Welcomed
    | Listed
    | Commanded
    | Exited
    | OomKilled
    | RetryDue
    | RetryDone
    | Accepted
    | Made
    | Started
    | Adopted
    | Failed
    | StopIssued
    | Stopped
    | Finished
    | Removed
)

# ------------------------------------------------------------------ actions (outputs)


class Stop(enum.Enum):
    NONE = "none"
    GRACEFUL = "graceful"
    KILL = "kill"


@dataclass(frozen=True, slots=True)
class Apply:
    """Make the instance's container match what is wanted *when this runs* (the executor reads it again
    under the instance's lock): create what is missing, start or stop what differs, re-report what is as
    wanted. ``stop_first`` stops it before (restart, kill)."""

    instance_id: str
    stop_first: Stop = Stop.NONE
    after_crash: bool = False


class Remove(OneInstance):
    """Stop (expected) and remove the container, drop its files, report it removed."""

    __slots__ = ()


class RemoveUnknown(OneContainer):
    """A labelled container nobody wants, past its grace."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class ScheduleRetry:
    instance_id: str
    delay_s: float


class CancelRetry(OneInstance):
    """Cancel the instance's waiting retry."""

    __slots__ = ()


class ReportKind(enum.Enum):
    ACCEPTED = "accepted"
    CREATED = "created"
    STARTED = "started"
    EXITED = "exited"
    OOM_KILLED = "oom_killed"
    REMOVED = "removed"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class Report:
    """An instance event for the coordinator."""

    kind: ReportKind
    instance_id: str
    container_id: str = ""
    exit_code: int = 0
    message: str = ""
    #: The crash that made this report is one of too many in a row (the agent warns in its own log too).
    crash_loop: bool = False


Action = Apply | Remove | RemoveUnknown | ScheduleRetry | CancelRetry | Report

# ------------------------------------------------------------------ the state


@dataclass(slots=True)
class Tracked:
    """What the agent knows of one instance beyond the engine's view."""

    want: Desired | None = None
    #: The next exit is one we caused (a stop, restart, kill or removal), not a crash.
    expected_exit: bool = False
    oom: bool = False
    crashes_in_a_row: int = 0
    #: When the container last started (unix seconds): how long it ran decides the back-off.
    started_at: float | None = None
    #: Crash restarts this agent made (reported in heartbeats).
    restarts: int = 0
    #: A retry waits out its back-off (its timer can be cancelled) ...
    retry_waiting: bool = False
    #: ... or is at work (it is not cancelled: it finishes and finds what is wanted then).
    retry_running: bool = False
    #: When a labelled container nobody wants was first seen.
    unknown_since: float | None = None

    @property
    def retry_pending(self) -> bool:
        """A retry owns the instance: Welcomes and resyncs leave it to the retry."""
        return self.retry_waiting or self.retry_running

    @property
    def idle(self) -> bool:
        """Nothing worth keeping: the record can go."""
        return (
            self.want is None
            and not self.retry_pending
            and not self.expected_exit
            and self.unknown_since is None
        )


@dataclass
class AgentState:
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    unknown_grace_s: float = 300.0
    #: Whether a Welcome said what is wanted (before it, nothing is removed as unwanted).
    welcomed: bool = False
    instances: dict[str, Tracked] = field(default_factory=dict)

    # ------------------------------------------------------------ queries

    def want(self, instance_id: str) -> Desired | None:
        t = self.instances.get(instance_id)
        return t.want if t is not None else None

    @property
    def desired(self) -> dict[str, Desired]:
        return {iid: t.want for iid, t in self.instances.items() if t.want is not None}

    def restarts(self, instance_id: str) -> int:
        t = self.instances.get(instance_id)
        return t.restarts if t is not None else 0

    def crashes_in_a_row(self, instance_id: str) -> int:
        t = self.instances.get(instance_id)
        return t.crashes_in_a_row if t is not None else 0

    def removal_time(self, instance_id: str) -> float | None:
        """When a labelled container nobody wants will be removed (None for a wanted one)."""
        t = self.instances.get(instance_id)
        if t is None or t.want is not None or t.unknown_since is None:
            return None
        return t.unknown_since + self.unknown_grace_s

    # ------------------------------------------------------------ the machine

    def handle(self, event: Event) -> list[Action]:
        actions = _HANDLERS[type(event)](self, event)
        # Nothing idle is kept: records exist only for instances something is known or pending about.
        touched = getattr(event, "instance_id", None)
        for iid in [touched] if touched is not None else list(self.instances):
            self._tidy(iid)
        return actions

    def _track(self, instance_id: str) -> Tracked:
        t = self.instances.get(instance_id)
        if t is None:
            t = self.instances[instance_id] = Tracked()
        return t

    def _tidy(self, instance_id: str) -> None:
        t = self.instances.get(instance_id)
        if t is not None and t.idle:
            del self.instances[instance_id]

    def _forget(self, instance_id: str) -> list[Action]:
        """Not wanted any more: out of the desired set, and a retry still waiting is cancelled (one already
        at work finishes, finds it unwanted, and what it made is removed)."""
        t = self.instances.get(instance_id)
        if t is None:
            return []
        t.want = None
        if t.retry_waiting:
            t.retry_waiting = False
            return [CancelRetry(instance_id)]
        return []

    def _planned(
        self,
        desired: Mapping[str, Desired],
        remove: Set[str],
        actual: Mapping[str, ContainerInfo],
        now: float,
        *,
        readopt: bool,
    ) -> list[Action]:
        """The gap between wanted and actual, closed; instances waiting out a back-off are left to it.
        ``readopt``: what is already as wanted is reported again (after a Welcome, so the coordinator's
        states converge), not on a resync."""
        for iid in actual:
            if iid not in desired:
                t = self._track(iid)
                if t.unknown_since is None:
                    t.unknown_since = now
        first_seen = {
            iid: t.unknown_since for iid, t in self.instances.items() if t.unknown_since is not None
        }
        actions: list[Action] = []
        for step in plan(desired, remove, actual, first_seen, now, self.unknown_grace_s):
            iid = step.instance_id
            found = self.instances.get(iid)
            if iid not in remove and found is not None and found.retry_pending:
                continue
            if step.act in (Act.REMOVE, Act.REPORT_REMOVED):
                actions += [*self._forget(iid), Remove(iid)]
            elif step.act is Act.REMOVE_UNKNOWN:
                actions.append(RemoveUnknown(iid, step.container_id or ""))
            elif step.act is not Act.ADOPT or readopt:
                actions.append(Apply(iid))
        return actions

    def _welcomed(self, ev: Welcomed) -> list[Action]:
        actions: list[Action] = []
        for iid in [i for i, t in self.instances.items() if t.want is not None and i not in ev.desired]:
            actions += self._forget(iid)
        for iid, want in ev.desired.items():
            t = self._track(iid)
            t.want, t.unknown_since = want, None
        self.welcomed = True
        return actions

    def _listed(self, ev: Listed) -> list[Action]:
        """The gap to what is wanted *now* (a command since the Welcome counts). Nothing happens before the
        first Welcome: until then the agent does not know what is wanted, and every container would look
        unwanted."""
        if not self.welcomed:
            return []
        for iid, t in list(self.instances.items()):
            if t.unknown_since is not None and (iid not in ev.actual or t.want is not None):
                t.unknown_since = None
        # A release the Welcome said is void for an instance a command wants again since.
        remove = {iid for iid in ev.remove if self.want(iid) is None}
        return self._planned(self.desired, remove, ev.actual, ev.now, readopt=ev.readopt)

    def _commanded(self, ev: Commanded) -> list[Action]:
        iid = ev.instance_id
        if ev.order is Order.REMOVE or ev.want is None:
            return [*self._forget(iid), Remove(iid)]
        t = self._track(iid)
        t.want, t.unknown_since = ev.want, None
        stop = {Order.RESTART: Stop.GRACEFUL, Order.KILL: Stop.KILL}.get(ev.order, Stop.NONE)
        return [Apply(iid, stop_first=stop)]

    def _exited(self, ev: Exited) -> list[Action]:
        """An exit we caused is a stop, not a crash; a crash of a container that should run is reported with
        its reason and restarted after a back-off."""
        iid = ev.instance_id
        t = self._track(iid)
        if t.expected_exit:
            t.expected_exit = t.oom = False
            return []
        oom, t.oom = t.oom, False
        what = "the container was OOM-killed" if oom else f"the container exited with code {ev.exit_code}"
        message = what
        loop = False
        actions: list[Action] = []
        if self.policy.enabled and t.want is not None and t.want.running:
            ran_for = ev.now - (t.started_at or 0.0)
            crash = on_crash(self.policy, t.crashes_in_a_row, ran_for)
            t.crashes_in_a_row = crash.in_a_row
            message, loop = describe(crash, what), crash.loop
            t.retry_waiting = True
            actions.append(ScheduleRetry(iid, crash.delay_s))
        kind = ReportKind.OOM_KILLED if oom else ReportKind.EXITED
        actions.append(Report(kind, iid, ev.container_id, ev.exit_code, message, crash_loop=loop))
        return actions

    def _oom(self, ev: OomKilled) -> list[Action]:
        self._track(ev.instance_id).oom = True
        return []

    def _retry_due(self, ev: RetryDue) -> list[Action]:
        """After the back-off: start it again if it is still wanted running (a stop, removal or suspension
        meanwhile wins); a container that failed to be made is made again."""
        t = self.instances.get(ev.instance_id)
        if t is None or not t.retry_waiting:
            return []
        t.retry_waiting = False
        if t.want is None:
            return []
        t.retry_running = True
        return [Apply(ev.instance_id, after_crash=True)]

    def _retry_done(self, ev: RetryDone) -> list[Action]:
        t = self.instances.get(ev.instance_id)
        if t is not None:
            t.retry_running = False
        return []

    def _accepted(self, ev: Accepted) -> list[Action]:
        return [Report(ReportKind.ACCEPTED, ev.instance_id)]

    def _made(self, ev: Made) -> list[Action]:
        return [Report(ReportKind.CREATED, ev.instance_id, ev.container_id)]

    def _started(self, ev: Started) -> list[Action]:
        t = self._track(ev.instance_id)
        t.started_at = ev.now
        message = ""
        if ev.after_crash:
            t.restarts += 1
            message = f"restarted after crash {t.crashes_in_a_row} in a row"
        return [Report(ReportKind.STARTED, ev.instance_id, ev.container_id, message=message)]

    def _adopted(self, ev: Adopted) -> list[Action]:
        if not ev.running:
            return [Report(ReportKind.CREATED, ev.instance_id, ev.container_id)]
        t = self._track(ev.instance_id)
        if t.started_at is None:
            t.started_at = ev.started_at or ev.now
        return [Report(ReportKind.STARTED, ev.instance_id, ev.container_id)]

    def _failed(self, ev: Failed) -> list[Action]:
        """Tried again with the crash back-off while the coordinator still wants it: it answers a failure of
        something it no longer wants (a deploy that never ran) with a removal, which ends the retries."""
        actions: list[Action] = [Report(ReportKind.FAILED, ev.instance_id, message=ev.why)]
        t = self.instances.get(ev.instance_id)
        if t is not None and t.want is not None and self.policy.enabled:
            failure = on_crash(self.policy, t.crashes_in_a_row, 0.0)
            t.crashes_in_a_row = failure.in_a_row
            t.retry_waiting = True
            actions.append(ScheduleRetry(ev.instance_id, failure.delay_s))
        return actions

    def _stop_issued(self, ev: StopIssued) -> list[Action]:
        self._track(ev.instance_id).expected_exit = True
        return []

    def _stopped(self, ev: Stopped) -> list[Action]:
        return [Report(ReportKind.STOPPED, ev.instance_id, ev.container_id)]

    def _finished(self, ev: Finished) -> list[Action]:
        """Dropped while its container was being made (a Welcome without it arrived meanwhile): none of it
        stays."""
        if self.want(ev.instance_id) is None:
            return [Remove(ev.instance_id)]
        return []

    def _removed(self, ev: Removed) -> list[Action]:
        t = self.instances.get(ev.instance_id)
        if t is not None:
            # Nothing of its runs is kept. An exit the removal's stop caused may still be on its way from
            # the engine: it stays expected (and the record with it) until it arrives.
            t.restarts = t.crashes_in_a_row = 0
            t.started_at, t.unknown_since, t.oom = None, None, False
        return [Report(ReportKind.REMOVED, ev.instance_id, ev.container_id)]


_HANDLERS: dict[type, Callable[[AgentState, Any], list[Action]]] = {
    Welcomed: AgentState._welcomed,
    Listed: AgentState._listed,
    Commanded: AgentState._commanded,
    Exited: AgentState._exited,
    OomKilled: AgentState._oom,
    RetryDue: AgentState._retry_due,
    RetryDone: AgentState._retry_done,
    Accepted: AgentState._accepted,
    Made: AgentState._made,
    Started: AgentState._started,
    Adopted: AgentState._adopted,
    Failed: AgentState._failed,
    StopIssued: AgentState._stop_issued,
    Stopped: AgentState._stopped,
    Finished: AgentState._finished,
    Removed: AgentState._removed,
}
