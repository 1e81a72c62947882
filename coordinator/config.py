"""The coordinator's options. config/coordinator.yaml documents every one with its default."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from coordinator.placement.scheduler import Strategy


def split_host_port(value: str, field: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{field} must be HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HttpOptions(_Section):
    listen: str = "127.0.0.1:8080"

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        split_host_port(v, "http.listen")
        return v


class GrpcOptions(_Section):
    #: Agent sessions (mutual TLS). Port 0 picks a free port (tests).
    listen: str = "0.0.0.0:7443"
    #: Enrollment (server-only TLS: the agent has no certificate yet). Empty: the session port + 1.
    enroll_listen: str = ""
    #: Host name or IP agents dial (the agentCommand of a new node names it). Empty: this host's FQDN.
    public_address: str = ""
    #: Extra names and IPs for the gRPC server certificate (it always holds "moorage-coordinator").
    tls_names: list[str] = Field(default_factory=lambda: ["localhost", "127.0.0.1", "::1"])


class StorageOptions(_Section):
    #: SQLAlchemy URL; empty means SQLite in the data directory. postgresql://user:pass@host/db for several
    #: coordinators sharing one database.
    database: str = ""
    #: SQLite synchronous pragma: FULL makes every acknowledged write survive power loss.
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    #: File holding the cluster key (also --cluster-key-file; or the key itself in MOORAGE_CLUSTER_KEY).
    #: With it the CA, sealing key and JWT secret live in the database, sealed, shared by every coordinator
    #: on it. Empty and no MOORAGE_CLUSTER_KEY: they live in the data directory (one coordinator).
    cluster_key_file: str = ""


class FleetOptions(_Section):
    heartbeat_interval_s: float = Field(5.0, gt=0)
    #: Missed intervals before a node is heartbeat-abnormal and its instances unhealthy.
    grace_intervals: int = Field(3, ge=1)
    #: Seconds without a heartbeat after which a node is offline.
    offline_after_s: float = Field(60.0, gt=0)
    #: How often heartbeat data (lastChecked, metrics) is written to the database, in one batch.
    batch_period_s: float = Field(1.0, gt=0)
    #: Every this many heartbeats an agent sends a full one (every container, the host's metrics); those
    #: between say only that the node lives, which containers changed and whose byte counters moved. Host
    #: metrics are as fresh as the last full one. 1: every heartbeat is full.
    full_report_every: int = Field(6, ge=1, le=1000)
    #: How long an API call that waits for an agent (delete) waits before answering with the state so far.
    command_wait_s: float = Field(15.0, ge=0)
    #: After a coordinator start, how long the nodes of its last run have to reconnect before they count
    #: as silent (keep it above the agents' reconnect_max_s plus a heartbeat interval).
    startup_grace_s: float = Field(45.0, gt=0)


class EnrollmentOptions(_Section):
    #: How long a node's join token may be used.
    join_token_ttl_s: int = Field(86_400, ge=1)
    #: Lifetime of a node's client certificate; agents renew at two thirds of it.
    certificate_lifetime_s: int = Field(30 * 86_400, ge=2)


class AuthOptions(_Section):
    #: Lifetime of a JWT from POST /api/auth/login.
    jwt_ttl_s: int = Field(12 * 3600, ge=60)
    #: Failed logins allowed per (client address, login name) in the window, and wrong keys or tokens per
    #: client address; the next one is answered 429. A valid key or token is never refused.
    failed_attempts: int = Field(10, ge=1)
    failed_window_s: float = Field(60.0, gt=0)
    #: TLS proxies in front of the coordinator (addresses or CIDR networks): for a request from one of them
    #: the client is the nearest address in X-Forwarded-For that is not one of them.
    trusted_proxies: list[str] = Field(default_factory=list)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError as exc:
                raise ValueError(f"auth.trusted_proxies: {value!r} is not an address or network") from exc
        return values


class PlacementOptions(_Section):
    #: spread: the node with the most free memory first; binpack: the fullest node that still fits first.
    strategy: Strategy = Strategy.SPREAD


class CatalogOptions(_Section):
    #: Image catalog; relative paths are resolved against the config file's directory. Empty: built in.
    images: str = ""
    #: Size catalog (the servers and client dialects order by size name). Empty: built in.
    sizes: str = ""


class InstancesOptions(_Section):
    #: Seconds an instance lives before it expires and is released (the vpn dialect's expire_time); 0: never.
    default_lifetime_s: float = Field(0.0, ge=0)
    #: How often expired instances are looked for and released.
    expiry_check_s: float = Field(10.0, gt=0)


class WebhooksOptions(_Section):
    #: Seconds a receiver has to answer one POST before the attempt counts as failed.
    timeout_s: float = Field(10.0, gt=0, le=300)
    #: Attempts at one event before it is given up on (counted as dropped on the hook) and delivery moves on.
    max_attempts: int = Field(10, ge=1, le=100)
    #: The wait after the first failure; it doubles with each one, up to retry_max_s.
    retry_base_s: float = Field(1.0, gt=0)
    retry_max_s: float = Field(300.0, gt=0)
    #: Whether an organization's hooks may POST to loopback, private and link-local addresses (an admin's
    #: always may). Off, a tenant cannot make the coordinator reach into the network it runs in.
    allow_private_targets: bool = False


class EventsOptions(_Section):
    #: Seconds an event is kept (the stream's Last-Event-ID reaches back this far); older ones are pruned.
    retention_s: float = Field(7 * 86400.0, gt=0)
    #: How often events past the retention are pruned.
    prune_every_s: float = Field(60.0, gt=0)


class ServersOptions(_Section):
    """What POST /api/servers (and a client order) uses for what the request leaves out."""

    #: Catalog image name or Docker reference.
    image: str = ""
    #: Region id, identifier or country (ISO-3166 alpha-2) to place in; its fallbacks follow. Empty: any
    #: region with room, or a node in no region.
    region: str = ""
    #: Size catalog name (the built-in catalog has "small").
    size: str = "small"
    #: What the servers dialect reports as `provider` and `platform`.
    provider: str = "moorage"
    platform: str = "linux/amd64"


class CoordinatorConfig(_Section):
    data_dir: Path = Path("/var/lib/moorage-coordinator")
    #: The admin API key to install on first start (also MOORAGE_ADMIN_KEY / --admin-key). Empty: generated.
    admin_key: str = ""
    log_level: str = "info"
    log_json: bool = True
    http: HttpOptions = Field(default_factory=HttpOptions)
    grpc: GrpcOptions = Field(default_factory=GrpcOptions)
    storage: StorageOptions = Field(default_factory=StorageOptions)
    fleet: FleetOptions = Field(default_factory=FleetOptions)
    enrollment: EnrollmentOptions = Field(default_factory=EnrollmentOptions)
    auth: AuthOptions = Field(default_factory=AuthOptions)
    catalog: CatalogOptions = Field(default_factory=CatalogOptions)
    placement: PlacementOptions = Field(default_factory=PlacementOptions)
    servers: ServersOptions = Field(default_factory=ServersOptions)
    instances: InstancesOptions = Field(default_factory=InstancesOptions)
    events: EventsOptions = Field(default_factory=EventsOptions)
    webhooks: WebhooksOptions = Field(default_factory=WebhooksOptions)
    #: The file this was read from: relative paths resolve against it. Not an option (a private attribute).
    _source: Path | None = PrivateAttr(None)

    def set_source(self, path: Path) -> None:
        self._source = path

    def resolve(self, path: str) -> Path:
        p = Path(path)
        if p.is_absolute() or self._source is None:
            return p
        return self._source.parent / p

    @property
    def enroll_listen(self) -> str:
        if self.grpc.enroll_listen:
            return self.grpc.enroll_listen
        host, port = split_host_port(self.grpc.listen, "grpc.listen")
        return f"{host}:{port + 1 if port else 0}"
