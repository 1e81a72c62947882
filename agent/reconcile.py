"""Desired against actual: a pure function from what the coordinator wants and what the engine has to the
actions that close the gap. No I/O, so every case is a unit test (and a hypothesis property)."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Set
from dataclasses import dataclass

from agent.runtime.base import ContainerInfo, ContainerSpec, ContainerStatus


class Act(enum.StrEnum):
    DEPLOY = "deploy"  # no container: pull, create, start (or only create when it should be stopped)
    START = "start"  # a container that should run but does not
    STOP = "stop"  # a container that runs but should not
    ADOPT = "adopt"  # already as wanted: report it so the coordinator's state converges
    REMOVE = "remove"  # the coordinator released it
    REPORT_REMOVED = "report_removed"  # released and already gone: say so
    REMOVE_UNKNOWN = "remove_unknown"  # labelled for this node, wanted by nobody, past its grace


@dataclass(frozen=True, slots=True)
class Desired:
    spec: ContainerSpec
    running: bool


@dataclass(frozen=True, slots=True)
class Action:
    act: Act
    instance_id: str
    spec: ContainerSpec | None = None
    container_id: str | None = None


RUNNING = {ContainerStatus.RUNNING, ContainerStatus.RESTARTING}


def plan(
    desired: Mapping[str, Desired],
    remove: Set[str],
    actual: Mapping[str, ContainerInfo],
    unknown_first_seen: Mapping[str, float],
    now: float,
    grace_s: float,
) -> list[Action]:
    """Actions in a stable order (instance id), at most one per instance."""
    actions: list[Action] = []
    for iid in sorted(set(desired) | set(remove) | set(actual)):
        have = actual.get(iid)
        if iid in remove:
            actions.append(
                Action(Act.REMOVE, iid, container_id=have.container_id)
                if have
                else Action(Act.REPORT_REMOVED, iid)
            )
        elif iid in desired:
            want = desired[iid]
            if have is None:
                actions.append(Action(Act.DEPLOY, iid, spec=want.spec))
            elif want.running and have.status not in RUNNING:
                actions.append(Action(Act.START, iid, spec=want.spec, container_id=have.container_id))
            elif not want.running and have.status in RUNNING:
                actions.append(Action(Act.STOP, iid, spec=want.spec, container_id=have.container_id))
            else:
                actions.append(Action(Act.ADOPT, iid, spec=want.spec, container_id=have.container_id))
        elif have is not None:
            first = unknown_first_seen.get(iid, now)
            if now - first >= grace_s:
                actions.append(Action(Act.REMOVE_UNKNOWN, iid, container_id=have.container_id))
    return actions
