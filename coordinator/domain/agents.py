"""What agents report and what they are told, in the coordinator's own terms.

The gateway translates these to and from protobuf at the edge; use cases and the fleet never see the wire
format, so the seam where a use case says "tell node N to do X and wait" can later cross processes.
Field names follow the protocol's, so a reader of moorage.proto finds them here unchanged.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from coordinator.domain.records import HostMetrics, Instance, ServerIdentity


class ContainerState(enum.StrEnum):
    """A container as the agent's engine last saw it (the values are what the API and messages say)."""

    UNSPECIFIED = "unspecified"
    ABSENT = "absent"
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    RESTARTING = "restarting"
    PAUSED = "paused"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class InstanceStatus:
    """One container in a report (a heartbeat or the Hello)."""

    instance_id: str
    container_id: str = ""
    state: ContainerState = ContainerState.UNSPECIFIED
    exit_code: int = 0
    oom_killed: bool = False
    #: Crash restarts the agent made since the container was deployed.
    restarts: int = 0
    #: When the container last started (unix ms): with its id, it tells one run's byte counters from the next.
    started_at_ms: int = 0
    health: str = ""
    #: The container's own byte counters (they restart at zero with a new network namespace), and rates.
    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_mbps: float = 0.0
    tx_mbps: float = 0.0
    #: When set: a labelled container nobody wants, and when its agent removes it (unix ms).
    remove_at_ms: int = 0
    #: Why the instance's bandwidth cap is not in force ("" when it is, or there is none).
    limit_error: str = ""

    @property
    def runs(self) -> bool:
        """Running, and not failing a health check (a container without one counts as healthy)."""
        return self.state is ContainerState.RUNNING and self.health in ("", "healthy")


class Counters(NamedTuple):
    """A container's byte counters and rates, in the run its last reported status named."""

    instance_id: str
    rx_bytes: int
    tx_bytes: int
    rx_mbps: float
    tx_mbps: float


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Full: every container the agent has (``instances``) with its counters, and the host's metrics.
    Partial (``partial``): the node is alive; ``instances`` are the containers whose status changed since
    the session's last heartbeat, ``gone`` those that went, ``counters`` those of the others whose counters
    moved; the rest are as last reported."""

    instances: Sequence[InstanceStatus] = ()
    host: HostMetrics | None = None
    #: Why the host's container engine did not answer the agent ("" when it did): nothing is known to run.
    engine_error: str = ""
    #: When the agent sent it (unix seconds; None when it did not say).
    sent_at: float | None = None
    partial: bool = False
    gone: frozenset[str] = frozenset()
    counters: Sequence[Counters] = ()

    def then(self, newer: Heartbeat) -> Heartbeat:
        """This heartbeat and a newer one of the same session as one (a queue keeps only the newest: a
        partial one must not lose what the one before it said)."""
        if not newer.partial:
            return newer
        statuses = {s.instance_id: s for s in self.instances}
        counters = {c.instance_id: c for c in self.counters}
        for c in newer.counters:
            known = statuses.get(c.instance_id)
            if known is None:
                counters[c.instance_id] = c
            else:
                statuses[c.instance_id] = replace(known, **c._asdict())
        for status in newer.instances:
            statuses[status.instance_id] = status
            counters.pop(status.instance_id, None)
        for instance_id in newer.gone:
            statuses.pop(instance_id, None)
            counters.pop(instance_id, None)
        return Heartbeat(
            instances=tuple(statuses.values()),
            host=newer.host or self.host,
            engine_error=newer.engine_error,
            sent_at=newer.sent_at,
            partial=self.partial,
            gone=self.gone.difference(statuses).union(newer.gone) if self.partial else frozenset(),
            counters=tuple(counters.values()),
        )


@dataclass(frozen=True, slots=True)
class Hello:
    """The first message of a session: the agent's whole truth."""

    agent_version: str = ""
    cpu_count: int = 0
    instances: Sequence[InstanceStatus] = ()
    #: Images present on the host, and whether the agent may pull others ("never" means it may not).
    images: frozenset[str] = frozenset()
    pull_policy: str = "missing"


class EventKind(enum.Enum):
    UNSPECIFIED = enum.auto()
    ACCEPTED = enum.auto()  # the agent took a deploy and is provisioning
    CREATED = enum.auto()
    STARTED = enum.auto()
    EXITED = enum.auto()
    OOM_KILLED = enum.auto()
    REMOVED = enum.auto()
    FAILED = enum.auto()  # provisioning failed; the message says why
    STOPPED = enum.auto()


@dataclass(frozen=True, slots=True)
class InstanceEvent:
    instance_id: str
    kind: EventKind
    exit_code: int = 0
    message: str = ""
    container_id: str = ""


class CommandKind(enum.Enum):
    DEPLOY = enum.auto()
    START = enum.auto()
    STOP = enum.auto()
    RESTART = enum.auto()
    KILL = enum.auto()
    REMOVE = enum.auto()
    SUSPEND = enum.auto()


@dataclass(frozen=True, slots=True)
class Workload:
    """What an agent gets for one instance: the whole record (it applies it idempotently) and, for a
    server, its identity with the secrets opened."""

    instance: Instance
    identity: ServerIdentity | None = None


@dataclass(frozen=True, slots=True)
class Command:
    kind: CommandKind
    workload: Workload
    command_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def instance_id(self) -> str:
        return self.workload.instance.id


@dataclass(frozen=True, slots=True)
class CommandResult:
    command_id: str
    instance_id: str = ""
    ok: bool = True
    error: str = ""
    container_id: str = ""


@dataclass(frozen=True, slots=True)
class Welcome:
    """The answer to a Hello: the node's whole desired set, and containers to remove now."""

    node_id: str
    heartbeat_interval_s: float
    desired: Sequence[Workload] = ()
    remove: Sequence[str] = ()
    #: Every this many heartbeats the agent sends a full one, partial ones in between (1: all full).
    full_report_every: int = 1


@dataclass(frozen=True, slots=True)
class Renewed:
    """A node's renewed client certificate."""

    certificate_pem: bytes


#: What the coordinator sends down a session.
@dataclass(frozen=True, slots=True)
class LogsRequest:
    """An instance's last ``tail`` lines of output and, with ``follow``, what follows; ``cancel`` ends the
    request of that id."""

    request_id: str
    instance_id: str = ""
    tail: int = 0
    follow: bool = False
    cancel: bool = False


@dataclass(frozen=True, slots=True)
class LogChunk:
    """Whole lines of a requested log (``end``: the last of them; ``error``: why it ended early)."""

    request_id: str
    data: bytes
    end: bool
    error: str
    #: False for an end the coordinator made (its reader fell behind, the session went): the agent may
    #: still be streaming and is told to stop.
    from_agent: bool = True


@dataclass(frozen=True, slots=True)
class ReportRequest:
    """Send a full heartbeat now (what the partial ones since the last said is no longer known here)."""


Outgoing = Welcome | Command | Renewed | LogsRequest | ReportRequest


@dataclass(frozen=True, slots=True)
class ClusterView:
    """The fleet as the other coordinators on the database hold it, read once a batch period."""

    #: Nodes whose agent session a live coordinator other than this one holds, to that coordinator.
    owners: Mapping[str, str]
    #: The stored last heartbeat (lastChecked) of those nodes and of the orphans.
    last_checked: Mapping[str, float | None]
    #: Enrolled nodes held by no live coordinator (their holder died, or none ever did): the leader's.
    orphans: frozenset[str]
    #: Where agents reach each live coordinator (HOST:PORT), oldest first.
    addresses: tuple[str, ...] = ()
    #: When each of ``owners``' sessions began (the database's clock).
    since: Mapping[str, float] = field(default_factory=dict)
    #: Why their container engines do not answer, as their holders' batch writes last said.
    engine_errors: Mapping[str, str] = field(default_factory=dict)
