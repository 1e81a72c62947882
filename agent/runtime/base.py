"""The narrow interface between the agent and whatever runs its containers.

Reconcile and the session only speak these types, so the logic above can be unit-tested against an
in-memory runtime while the Docker implementation is proven against a real engine.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

LABEL_INSTANCE = "moorage.instance"
LABEL_NODE = "moorage.node"
LABEL_MANAGED = "moorage.managed"


class RuntimeFailure(Exception):
    """A runtime operation failed; ``str(exc)`` is the engine's own message, shown to operators."""


class ImageNotFound(RuntimeFailure):
    """The image is neither on the host nor pullable."""


class ContainerNotFound(RuntimeFailure):
    """The container the caller named does not exist (any more)."""


class PullPolicy(enum.StrEnum):
    ALWAYS = "always"
    MISSING = "missing"
    NEVER = "never"


@dataclass(frozen=True, slots=True)
class PortBinding:
    """One host allocation, published TCP and UDP to the same port inside the container."""

    bind_address: str
    port: int


@dataclass(frozen=True, slots=True)
class FileSet:
    """Files to appear read-only in the container under ``target_dir``."""

    target_dir: str
    contents: Mapping[str, bytes]


@dataclass(frozen=True, slots=True)
class Mount:
    """A host directory bind-mounted into the container."""

    source: str
    target: str
    read_only: bool = True


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    instance_id: str
    node_id: str
    name: str
    image: str
    env: Mapping[str, str]
    memory_mib: int
    cpu_percent: int  # percent of one core; 0 means unlimited
    ports: Sequence[PortBinding] = ()
    command: Sequence[str] = ()
    stop_signal: str = "SIGTERM"
    stop_timeout_s: int = 10
    labels: Mapping[str, str] = field(default_factory=dict)
    #: What the coordinator sent; the agent writes it to the host (agent/files.py) and fills in ``mounts``.
    files: Sequence[FileSet] = ()
    mounts: Sequence[Mount] = ()
    #: Bandwidth cap each way in Mbps (0: none); the agent sets it after every start (agent/shaping.py).
    bandwidth_mbps: int = 0


class ContainerStatus(enum.StrEnum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    RESTARTING = "restarting"
    EXITED = "exited"
    DEAD = "dead"
    REMOVING = "removing"


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """What the engine says about one labelled container."""

    container_id: str
    instance_id: str
    node_id: str
    name: str
    image: str
    status: ContainerStatus
    exit_code: int
    oom_killed: bool
    pid: int  # 0 when not running
    started_at: float  # unix seconds, 0 when never started
    restart_count: int
    health: str  # "", "starting", "healthy", "unhealthy"
    labels: Mapping[str, str]
    #: The engine's handle on the container's network namespace ("" when it has none, e.g. not running).
    netns: str = ""


class EventKind(enum.StrEnum):
    STARTED = "started"
    EXITED = "exited"
    OOM = "oom"
    REMOVED = "removed"
    HEALTH = "health"


@dataclass(frozen=True, slots=True)
class ContainerEvent:
    kind: EventKind
    container_id: str
    instance_id: str
    exit_code: int = 0
    at: float = 0.0
    detail: str = ""


class EventStream(Protocol):
    def __aiter__(self) -> AsyncIterator[ContainerEvent]: ...

    async def __anext__(self) -> ContainerEvent: ...

    async def aclose(self) -> None: ...


class LogStream(Protocol):
    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def __anext__(self) -> bytes: ...

    async def aclose(self) -> None: ...


class Runtime(Protocol):
    """Every method is a coroutine; implementations must not block the event loop."""

    async def ping(self) -> None: ...

    async def has_image(self, image: str) -> bool: ...

    async def images(self) -> list[str]:
        """Every repo:tag on the host, so the coordinator can refuse a deploy the node cannot run."""
        ...

    async def ensure_image(self, image: str, policy: PullPolicy) -> None:
        """Make the image present (pulling per policy) or raise ImageNotFound with the engine's reason."""
        ...

    async def create(self, spec: ContainerSpec) -> str:
        """Create (not start) the container; returns its id. Idempotent per instance id."""
        ...

    async def start(self, container_id: str) -> None: ...

    async def stop(self, container_id: str, timeout_s: int) -> None: ...

    async def kill(self, container_id: str, signal: str = "SIGKILL") -> None: ...

    async def remove(self, container_id: str) -> None:
        """Force-remove; a container that is already gone is not an error."""
        ...

    async def inspect(self, container_id: str) -> ContainerInfo: ...

    async def list(self, node_id: str) -> list[ContainerInfo]:
        """Every container labelled for this node, running or not."""
        ...

    async def find(self, node_id: str, instance_id: str) -> ContainerInfo | None:
        """The container of one instance on this node: an action on one instance must not inspect them
        all (a hundred instances acting at once would be ten thousand inspects)."""
        ...

    def events(self, node_id: str) -> EventStream:
        """Lifecycle events of this node's labelled containers, fed from a dedicated thread."""
        ...

    def logs(self, container_id: str, tail: int, follow: bool) -> LogStream:
        """The container's last ``tail`` lines of output, then with ``follow`` what it writes next."""
        ...

    async def close(self) -> None: ...
