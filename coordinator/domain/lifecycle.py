"""The instance lifecycle in one table: (canonical state, event) -> next state.

Every writer of an instance's state goes through it (store/instances.transition applies it under the row's
lock), so what may follow what is written down once instead of as ``allowed_from`` sets beside each write.
A pair that is not in the table is refused: the write changes nothing and is logged. Pure, so its
properties (release always ends in released; nothing leaves released) are tested on their own.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from coordinator.domain.records import LIVE_STATES, InstanceState

S = InstanceState


class Event(enum.StrEnum):
    # What the owner or an admin asks for (the new desired state, durable before the agent hears of it).
    START = "start"
    STOP = "stop"
    RESTART = "restart"
    KILL = "kill"
    SUSPEND = "suspend"
    UNSUSPEND = "unsuspend"
    RELEASE = "release"
    # What the agent reports.
    ACCEPTED = "accepted"  # it took the deploy and is pulling or creating
    CREATED = "created"  # the container exists
    STARTED = "started"  # the container was started
    CONFIRMED = "confirmed"  # a heartbeat shows the container running (and not failing its health check)
    FAULT = "fault"  # exited, OOM-killed, vanished, removed behind our back, or its node went silent
    FAILED = "failed"  # provisioning failed (the engine refused the container, or the image)
    REMOVED = "removed"  # the container is gone
    # What the coordinator decides on its own.
    ABANDONED = "abandoned"  # its node was deleted before the agent confirmed the removal


PRE_START = frozenset({S.PENDING, S.PROVISIONING, S.CREATED})
#: Started, whatever became of it since.
STARTED_STATES = frozenset({S.STARTING, S.RUNNING, S.UNHEALTHY})

_RULES: list[tuple[Event, Iterable[InstanceState], InstanceState]] = [
    (Event.START, {S.CREATED, S.STOPPED, S.UNHEALTHY}, S.STARTING),
    (Event.STOP, {S.CREATED, *STARTED_STATES}, S.STOPPED),
    (Event.RESTART, {S.CREATED, S.STOPPED, *STARTED_STATES}, S.STARTING),
    (Event.KILL, STARTED_STATES, S.STOPPED),
    (Event.SUSPEND, {S.CREATED, S.STOPPED, *STARTED_STATES}, S.SUSPENDED),
    (Event.UNSUSPEND, {S.SUSPENDED}, S.STARTING),
    # Repeating a release while releasing asks the agent again; a failed instance has nothing to remove.
    (Event.RELEASE, LIVE_STATES, S.RELEASING),
    (Event.RELEASE, {S.ERROR}, S.RELEASED),
    (Event.ACCEPTED, {S.PENDING}, S.PROVISIONING),
    (Event.CREATED, {S.PENDING, S.PROVISIONING}, S.CREATED),
    # Not from running or unhealthy: a re-adopted container must not flap through "starting" (the next
    # heartbeat confirms it), and not from stopped: a start the owner did not ask for changes no wish.
    (Event.STARTED, PRE_START, S.STARTING),
    (Event.CONFIRMED, {S.STARTING, S.UNHEALTHY}, S.RUNNING),
    (Event.FAULT, STARTED_STATES, S.UNHEALTHY),
    # A first deploy that failed: nothing of it runs, nobody waits for it.
    (Event.FAILED, PRE_START, S.ERROR),
    # Making the container again failed for one that had one (it vanished; a start or restart found it
    # gone): it keeps its ports, the reason is shown, the agent retries. From running a failure is a late
    # report of something older.
    (Event.FAILED, {S.STARTING, S.UNHEALTHY}, S.UNHEALTHY),
    (Event.REMOVED, {S.RELEASING}, S.RELEASED),
    # Removed while it should exist: removed outside Moorage; the agent re-creates it.
    (Event.REMOVED, STARTED_STATES, S.UNHEALTHY),
    (Event.ABANDONED, {S.RELEASING}, S.RELEASED),
]

TABLE: dict[tuple[InstanceState, Event], InstanceState] = {}
for _event, _sources, _to in _RULES:
    for _state in _sources:
        assert (_state, _event) not in TABLE, f"two rules for {_state} + {_event}"
        TABLE[(_state, _event)] = _to

#: Refusals that are the normal course of things (a late or repeated report, a vanished container made
#: again, an adopted one), logged quietly.
EXPECTED_REFUSALS = frozenset(
    {
        (s, e)
        for s in (*STARTED_STATES, S.STOPPED, S.SUSPENDED)
        for e in (Event.ACCEPTED, Event.CREATED, Event.STARTED)
    }
    | {(S.RUNNING, Event.CONFIRMED), (S.RELEASED, Event.RELEASE)}
    | {(s, Event.FAULT) for s in (*PRE_START, S.STOPPED, S.SUSPENDED, S.RELEASING)}
    | {(s, e) for s in (S.ERROR, S.RELEASED) for e in Event if (s, e) not in TABLE}
)


def next_state(state: InstanceState, event: Event) -> InstanceState | None:
    """The state ``event`` moves an instance in ``state`` to, or None when the table refuses it."""
    return TABLE.get((state, event))


def sources(event: Event) -> frozenset[InstanceState]:
    """The states ``event`` applies in."""
    return frozenset(s for (s, e) in TABLE if e is event)


def holds_allocations(state: InstanceState) -> bool:
    """Live instances hold their allocations; a failed or released one holds none (the store frees them
    in the transition that leaves)."""
    return state in LIVE_STATES
