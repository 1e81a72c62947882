"""The agent's options. config/agent.yaml documents every one with its default. A frozen dataclass that
common/config.py checks, not a pydantic model: see there why."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.restarts import RestartPolicy
from agent.runtime.base import PullPolicy
from common.config import InvalidOption, option


@dataclass(frozen=True)
class AgentConfig:
    #: Identity (node key, certificate, CA) lives here; keep it across restarts.
    data_dir: Path = Path("/var/lib/moorage-agent")
    #: HOST:PORT of the coordinator's agent sessions (mutual TLS); several, separated by commas, for
    #: coordinators sharing one database: a lost session is retried on the next one.
    coordinator: str = ""
    #: HOST:PORT of the coordinator's enrollment port. Empty: the session port + 1 on the same host.
    enroll_address: str = ""
    #: One-time join token, needed only for the first start
    #: (MOORAGE2::<ca-sha256>::<sessions>::<enrollment address>::<id>.<secret>). It carries the
    #: coordinators' addresses: with it, ``coordinator`` and ``enroll_address`` may stay empty.
    join_token: str = ""
    #: Docker engine URL; empty uses DOCKER_HOST or the local socket.
    docker_url: str = ""
    #: When to pull an image: always, missing (only when absent) or never.
    pull_policy: PullPolicy = PullPolicy.MISSING
    #: Capacity offered to the coordinator; 0 means "what the host has".
    memory_mib: int = option(0, ge=0)
    disk_mib: int = option(0, ge=0)
    cpu_count: int = option(0, ge=0)
    #: Reconnect back-off: first delay and cap, in seconds (full jitter in between).
    reconnect_initial_s: float = option(0.5, gt=0)
    reconnect_max_s: float = option(30.0, gt=0)
    #: Events kept while the coordinator is away; the oldest are dropped (and counted) past this.
    event_buffer: int = option(10_000, ge=10)
    #: Heartbeat interval until the coordinator sets one in its Welcome.
    heartbeat_interval_s: float = option(5.0, gt=0)
    #: After a container's start is sent, send a heartbeat this much later (instead of at the interval's end)
    #: so the coordinator confirms it running at once; more holds a container that dies at once in starting.
    confirm_start_after_s: float = option(0.0, ge=0)
    #: Labelled containers the coordinator does not want are removed after this grace.
    unknown_container_grace_s: float = option(300.0, ge=0)
    #: Every this many seconds the agent compares what should run with what the engine has and acts on the
    #: difference (also right after the engine comes back from a restart).
    resync_interval_s: float = option(30.0, gt=0)
    #: Every this many seconds the agent hands its free heap memory back to the host (glibc's malloc_trim);
    #: 0: never (left to the allocator, whose threads' arenas keep what they freed).
    memory_trim_interval_s: float = option(60.0, ge=0)
    #: How many malloc arenas the agent's threads share (glibc); 0: glibc's own limit, eight per core. One
    #: arena per thread strands freed memory in each (the soak's RSS climbing by steps); the agent's threads
    #: take turns under Python's lock anyway, so sharing one costs nothing measurable.
    malloc_arenas: int = option(1, ge=0)
    #: How crashed containers are restarted (exponential back-off; a crash loop is reported).
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    #: HOST:PORT where the agent serves its Prometheus metrics (/metrics); empty: not served.
    metrics_listen: str = "127.0.0.1:9104"
    log_level: str = "info"
    log_json: bool = True

    def coordinators(self) -> list[str]:
        """The session addresses, in the order they are tried."""
        return [a.strip() for a in self.coordinator.split(",") if a.strip()]

    def enroll_target(self) -> str:
        if self.enroll_address:
            return self.enroll_address
        host, _, port = self.coordinators()[0].rpartition(":")
        return f"{host}:{int(port) + 1}"

    def __post_init__(self) -> None:
        if self.metrics_listen and not is_address(self.metrics_listen):
            raise InvalidOption("metrics_listen", f"{self.metrics_listen!r} is not HOST:PORT")
        if 0 < self.memory_trim_interval_s < 1:
            # Each trim walks every heap on the event loop: more than once a second is churn, not thrift.
            raise InvalidOption("memory_trim_interval_s", "must be 0 (never) or at least 1 second")
        for address in self.coordinators():
            if not is_address(address):
                raise InvalidOption("coordinator", f"{address!r} is not HOST:PORT")


def is_address(address: str) -> bool:
    """HOST:PORT (HOST a name, an IPv4 address or a bracketed IPv6 one)."""
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536
