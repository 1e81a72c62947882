"""What every use case needs, built once at start and handed to each service."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from coordinator.catalogs.images import Catalog
from coordinator.catalogs.sizes import SizeCatalog
from coordinator.config import CoordinatorConfig
from coordinator.domain.agents import Command, CommandKind, CommandResult, Workload
from coordinator.domain.records import Instance, ServerIdentity
from coordinator.fleet.channel import NodeChannel
from coordinator.fleet.cluster import ClusterChannel
from coordinator.fleet.live import Fleet
from coordinator.metrics import Metrics
from coordinator.placement.snapshot import PlacementSnapshot
from coordinator.security.pki import CertificateAuthority
from coordinator.security.sealing import Sealer
from coordinator.store import instances as instances_store
from coordinator.store.engine import Store
from coordinator.store.regions import SnapshotReads


@dataclass
class Core:
    config: CoordinatorConfig
    store: Store
    fleet: Fleet
    catalog: Catalog
    ca: CertificateAuthority
    #: Opens the secrets stored sealed (server keys and secrets); its key lives in the data directory.
    sealer: Sealer
    sizes: SizeCatalog = field(default_factory=lambda: SizeCatalog([]))
    clock: Callable[[], float] = field(default=time.time)
    #: The scheduler's cached view of nodes and regions (placement/snapshot.py).
    snapshot: PlacementSnapshot = field(init=False)
    metrics: Metrics = field(default_factory=Metrics)
    #: Called when an instance is confirmed running for the first time since it started.
    running_hooks: list[Callable[[Instance], Coroutine[Any, Any, None]]] = field(default_factory=list)
    #: Ports the gRPC server actually bound (the config may say 0); agent commands name these.
    session_port: int = 0
    enroll_port: int = 0
    #: Set on PostgreSQL: the node channel across every coordinator on the database (fleet/cluster.py).
    cluster: ClusterChannel | None = None

    def __post_init__(self) -> None:
        self.snapshot = PlacementSnapshot(SnapshotReads(self.store))

    def opened(self, inst: Instance) -> ServerIdentity | None:
        """The instance's server identity with its secret and keys opened (None for other instances)."""
        sealed = inst.server
        if sealed is None:
            return None
        return ServerIdentity(
            sealed.name,
            self.sealer.open(sealed.secret, inst.id).decode(),
            self.sealer.open(sealed.ca_key, inst.id).decode(),
            sealed.ca_cert,
            self.sealer.open(sealed.tls_key, inst.id).decode(),
            sealed.tls_cert,
        )

    @property
    def agents(self) -> NodeChannel:
        """The only way a use case reaches an agent."""
        return self.cluster if self.cluster is not None else self.fleet

    def placement_changed(self) -> None:
        """An admin changed nodes, allocations or regions: every coordinator's placement view re-reads them
        before its next decision (the others hear it over the bus)."""
        self.snapshot.forget()
        if self.cluster is not None:
            self.cluster.tell_placement_changed()

    def workload(self, inst: Instance) -> Workload:
        """What the agent gets for the instance: the whole record, secrets opened."""
        return Workload(inst, self.opened(inst))

    def command(self, kind: CommandKind, inst: Instance) -> Command:
        return Command(kind, self.workload(inst))

    async def relay(
        self, node_id: str, kind: CommandKind, instance_id: str, command_id: str, wait_s: float | None
    ) -> CommandResult | None:
        """A command another coordinator relays for a node whose session is here: the instance as stored
        (the caller stored its desired state before telling), down this coordinator's session."""
        async with self.store.read() as conn:
            inst = await instances_store.get_instance(conn, instance_id)
        if inst is None or not self.fleet.is_connected(node_id):
            return None
        command = Command(kind, self.workload(inst), command_id)
        if wait_s is None:
            self.fleet.post(node_id, command)
            return None
        return await self.fleet.send(node_id, command, wait_s)

    def tell_remove(self, inst: Instance, *, wait: bool, ended: bool = False) -> Awaitable[object] | None:
        """Ask the instance's agent to remove its container; the answer to wait for when ``wait`` and the
        node is reachable, else None. A releasing one the agent was told about shows "stopping" in the
        servers dialect until its removal is reported; an ``ended`` one (failed, or released at once) is
        only told: nothing of it is tracked any more."""
        if inst.node_id is None:
            return None
        cmd = self.command(CommandKind.REMOVE, inst)
        if ended:
            self.agents.post(inst.node_id, cmd)
        # "stopping" is tracked where the removal will be reported: on the coordinator holding the session.
        here = self.fleet.is_connected(inst.node_id)
        if wait and self.agents.is_connected(inst.node_id):
            if here:
                self.fleet.removing.add(inst.id)
            return self.agents.send(inst.node_id, cmd, self.config.fleet.command_wait_s)
        if self.agents.post(inst.node_id, cmd) and here:
            self.fleet.removing.add(inst.id)
        return None
