"""Node use cases: create a node with its allocations and join token, list nodes with live status,
issue a fresh join token, and enroll an agent."""

from __future__ import annotations

import datetime as dt
import shlex
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from common.logging import get
from coordinator.domain.records import LIVE_STATES, Allocation, HostMetrics, Node, NodeStatus, Principal
from coordinator.security import tokens
from coordinator.security.pki import CertificateRequestError
from coordinator.service import policy
from coordinator.service.core import Core
from coordinator.service.errors import BadRequest, Conflict, NotFound, Unauthorized
from coordinator.service.instances import InstanceService
from coordinator.store import instances as instances_store
from coordinator.store import nodes as nodes_store
from coordinator.store import users as users_store

log = get("coordinator.nodes")

MAX_ALLOCATIONS_PER_CALL = 1000


@dataclass(frozen=True, slots=True)
class NodeOrder:
    name: str
    address: str
    port: int
    memory_mib: int
    disk_mib: int
    cpu_count: int
    tags: list[str]
    region_id: str | None = None
    bind_address: str = "0.0.0.0"
    ports: tuple[int, ...] = ()
    #: Dedicate the node to one organization (None: the shared fleet).
    organization_id: int | None = None
    #: The processor as described ("AMD Ryzen 9 5950X"); with cpu_count 0 the agent's cores count.
    processor: str = ""


@dataclass(frozen=True, slots=True)
class UnwantedContainer:
    """A container labelled for this node that no instance wants; its agent removes it at ``remove_at``."""

    instance_id: str
    container_id: str
    state: str
    remove_at: float


@dataclass(frozen=True, slots=True)
class NodeView:
    node: Node
    status: NodeStatus
    last_heartbeat: float | None
    host_metrics: HostMetrics | None
    connected: bool
    allocations_total: int
    allocations_assigned: int
    unwanted: tuple[UnwantedContainer, ...] = ()
    engine_error: str | None = None


@dataclass(frozen=True, slots=True)
class CreatedNode:
    view: NodeView
    allocations: list[Allocation]
    join_token: str
    join_token_expires_at: float
    agent_command: str


@dataclass(frozen=True, slots=True)
class Enrollment:
    node_id: str
    certificate_pem: bytes
    ca_certificate_pem: bytes


def parse_port_ranges(value: str, field: str) -> tuple[int, ...]:
    """ "30000-30099,25565" -> ports, with the offending piece named on error."""
    ports: list[int] = []
    for piece in (p.strip() for p in value.split(",")):
        if not piece:
            continue
        start, sep, end = piece.partition("-")
        if not (start.isascii() and start.isdigit()) or (sep and not (end.isascii() and end.isdigit())):
            raise BadRequest(f"{field}: {piece!r} is not a port or a range like 30000-30099", field=field)
        lo, hi = int(start), int(end) if sep else int(start)
        if not 1 <= lo <= hi <= 65535:
            raise BadRequest(f"{field}: {piece!r} is outside 1-65535 or reversed", field=field)
        ports.extend(range(lo, hi + 1))
    if len(set(ports)) != len(ports):
        raise BadRequest(f"{field}: the same port is listed twice", field=field)
    if len(ports) > MAX_ALLOCATIONS_PER_CALL:
        raise BadRequest(f"{field}: at most {MAX_ALLOCATIONS_PER_CALL} ports per call", field=field)
    return tuple(ports)


async def _check_organization(conn: AsyncConnection, organization_id: int | None) -> None:
    if organization_id is not None and not await users_store.organization_exists(conn, organization_id):
        raise BadRequest(f"organization: {organization_id} does not exist", field="organization")


class NodeService:
    def __init__(self, core: Core, instances: InstanceService) -> None:
        self.core = core
        self.instances = instances

    def _view(self, node: Node, counts: tuple[int, int]) -> NodeView:
        fleet = self.core.fleet
        return NodeView(
            node=node,
            status=fleet.status_of(node),
            last_heartbeat=fleet.last_heartbeat(node),
            host_metrics=fleet.host_metrics(node),
            connected=self.core.agents.is_connected(node.id),
            allocations_total=counts[0],
            allocations_assigned=counts[1],
            unwanted=tuple(
                UnwantedContainer(
                    s.instance_id,
                    s.container_id,
                    s.state.value,
                    s.remove_at_ms / 1000,
                )
                for s in fleet.unwanted(node.id)
            ),
            engine_error=fleet.engine_error(node.id),
        )

    async def create(self, caller: Principal, order: NodeOrder) -> CreatedNode:
        policy.require_admin(caller, "creating nodes")
        now = self.core.clock()
        node = Node(
            id=str(uuid.uuid4()),
            name=order.name,
            address=order.address,
            port=order.port,
            region_id=order.region_id,
            tags=order.tags,
            memory_mib=order.memory_mib,
            disk_mib=order.disk_mib,
            cpu_count=order.cpu_count,
            processor=order.processor,
            overallocation_pct=0,
            maintenance=False,
            enrolled=False,
            created_at=now,
            organization_id=order.organization_id,
        )
        rows = [(str(uuid.uuid4()), order.bind_address, p) for p in order.ports]
        token_id, secret, token = self._new_join_token()
        expires = now + self.core.config.enrollment.join_token_ttl_s
        async with self.core.store.write() as conn:
            if order.region_id is not None and not await nodes_store.region_exists(conn, order.region_id):
                raise BadRequest(f"region_id: region {order.region_id} does not exist", field="region_id")
            await _check_organization(conn, order.organization_id)
            await nodes_store.insert_node(conn, node)
            await nodes_store.insert_allocations(conn, node.id, rows, now)
            await nodes_store.replace_join_token(
                conn,
                node_id=node.id,
                token_id=token_id,
                digest=tokens.digest(secret),
                now=now,
                expires_at=expires,
            )
        self.core.placement_changed()
        allocations = [Allocation(id=a, node_id=node.id, bind_address=b, port=p) for a, b, p in rows]
        return CreatedNode(
            view=self._view(node, (len(rows), 0)),
            allocations=allocations,
            join_token=token,
            join_token_expires_at=expires,
            agent_command=self.agent_command(token),
        )

    def session_host(self) -> str:
        """The host name or IP agents dial for this coordinator."""
        return self.core.config.grpc.public_address or socket.getfqdn()

    def session_addresses(self) -> tuple[str, ...]:
        """Where agents open sessions: in a cluster every live coordinator (this one first), so an agent
        moves on to the next when it loses one."""
        cluster = self.core.cluster
        if cluster is not None and cluster.addresses:
            return cluster.addresses
        return (f"{self.session_host()}:{self.core.session_port}",)

    def _new_join_token(self) -> tuple[str, str, str]:
        enroll = f"{self.session_host()}:{self.core.enroll_port}"
        return tokens.new_join_token(self.core.ca.sha256, self.session_addresses(), enroll)

    def agent_command(self, token: str) -> str:
        """The exact line to run on the host: where to enroll, where to connect, and the token (which
        carries both too, so ``moorage-agent --join-token T`` alone also works)."""
        return (
            f"moorage-agent --coordinator {shlex.quote(','.join(self.session_addresses()))} "
            f"--enroll-address {shlex.quote(f'{self.session_host()}:{self.core.enroll_port}')} "
            f"--join-token {shlex.quote(token)}"
        )

    async def list_views(self, caller: Principal) -> list[NodeView]:
        """An admin sees every node; others the shared fleet and their organization's dedicated nodes."""
        async with self.core.store.read() as conn:
            found = await nodes_store.list_nodes(
                conn, organization_id=None if caller.admin else caller.organization_id
            )
            counts = await nodes_store.allocation_counts(conn)
        return [self._view(n, counts.get(n.id, (0, 0))) for n in found]

    async def health(self) -> tuple[str, int, bool]:
        """(the database engine's name, agents connected here, whether this coordinator leads), once the
        database has answered a query."""
        async with self.core.store.read() as conn:
            await nodes_store.ping(conn)
        cluster = self.core.cluster
        leading = cluster is None or cluster.bus.leading
        return self.core.store.engine.dialect.name, len(self.core.fleet.sessions), leading

    async def statuses(self, node_ids: Iterable[str]) -> dict[str, tuple[Node, NodeStatus]]:
        """The nodes named (those that still exist) with their status: what a list of instances embeds."""
        async with self.core.store.read() as conn:
            found = await nodes_store.nodes_by_ids(conn, node_ids)
        return {n.id: (n, self.core.fleet.status_of(n)) for n in found.values()}

    async def get(self, node_id: str) -> tuple[NodeView, list[Allocation]]:
        async with self.core.store.read() as conn:
            node = await nodes_store.get_node(conn, node_id)
            if node is None:
                raise NotFound(f"node {node_id} does not exist", field="node_id")
            allocations = await nodes_store.node_allocations(conn, node_id)
        assigned = sum(1 for a in allocations if a.instance_id)
        return self._view(node, (len(allocations), assigned)), allocations

    async def delete(self, caller: Principal, node_id: str, *, force: bool) -> list[str]:
        """Delete a node: refused while it holds live instances unless ``force``, which releases them
        first. Deleting voids the node's certificate (its serial goes with the row) and closes its session."""
        policy.require_admin(caller, "deleting nodes")
        async with self.core.store.read() as conn:
            if await nodes_store.get_node(conn, node_id) is None:
                raise NotFound(f"node_id: node {node_id} does not exist", field="node_id")
            live = await instances_store.list_instances(conn, node_id=node_id, states=LIVE_STATES)
        if live and not force:
            raise BadRequest(
                f"node_id: node {node_id} holds {len(live)} live instance(s); force: true releases them",
                field="node_id",
            )
        released = await self.instances.release_node(node_id) if live else []
        async with self.core.store.write() as conn:
            await nodes_store.delete_node(conn, node_id)
        self.core.agents.close(node_id)
        self.core.placement_changed()
        log.info("node deleted", node_id=node_id, released=len(released))
        return released

    async def update(self, caller: Principal, node_id: str, changes: dict[str, Any]) -> NodeView:
        """Change a node's description, region, capacity, overallocation or maintenance flag. Instances
        already placed keep their region (their place was counted there)."""
        policy.require_admin(caller, "changing nodes")
        async with self.core.store.write() as conn:
            region_id = changes.get("region_id")
            if region_id is not None and not await nodes_store.region_exists(conn, region_id):
                raise BadRequest(f"region_id: region {region_id} does not exist", field="region_id")
            await _check_organization(conn, changes.get("organization_id"))
            if not await nodes_store.update_node(conn, node_id, {**changes, "updated_at": self.core.clock()}):
                raise NotFound(f"node {node_id} does not exist", field="node_id")
        self.core.placement_changed()
        view, _ = await self.get(node_id)
        return view

    async def add_allocations(
        self, caller: Principal, node_id: str, bind_address: str, ports: tuple[int, ...]
    ) -> list[Allocation]:
        policy.require_admin(caller, "adding allocations")
        rows = [(str(uuid.uuid4()), bind_address, p) for p in ports]
        now = self.core.clock()
        async with self.core.store.write() as conn:
            if await nodes_store.get_node(conn, node_id) is None:
                raise NotFound(f"node {node_id} does not exist", field="node_id")
            clash = await nodes_store.existing_ports(conn, node_id, bind_address, ports)
            if clash:
                shown = ", ".join(map(str, clash[:20])) + (
                    f" and {len(clash) - 20} more" if len(clash) > 20 else ""
                )
                raise Conflict(
                    f"ports: {bind_address} already has port(s) {shown} on this node", field="ports"
                )
            await nodes_store.insert_allocations(conn, node_id, rows, now)
        self.core.placement_changed()
        return [Allocation(a, node_id, b, p, created_at=now, updated_at=now) for a, b, p in rows]

    async def delete_allocation(self, caller: Principal, node_id: str, allocation_id: str) -> None:
        policy.require_admin(caller, "removing allocations")
        async with self.core.store.write() as conn:
            found = await nodes_store.get_allocation(conn, node_id, allocation_id)
            if found is None:
                raise NotFound(f"allocation {allocation_id} does not exist on node {node_id}")
            if not await nodes_store.delete_free_allocation(conn, allocation_id):
                raise Conflict(f"allocation {found.bind_address}:{found.port} is assigned to an instance")
        self.core.placement_changed()

    async def update_allocation(
        self, caller: Principal, node_id: str, allocation_id: str, changes: dict[str, Any]
    ) -> Allocation:
        policy.require_admin(caller, "changing allocations")
        async with self.core.store.write() as conn:
            if await nodes_store.get_allocation(conn, node_id, allocation_id) is None:
                raise NotFound(f"allocation {allocation_id} does not exist on node {node_id}")
            await nodes_store.update_allocation(
                conn, allocation_id, {**changes, "updated_at": self.core.clock()}
            )
            found = await nodes_store.get_allocation(conn, node_id, allocation_id)
        assert found is not None
        return found

    async def renew(self, node_id: str, csr_pem: bytes) -> bytes:
        """A new certificate for a connected node. Its serial replaces the old one, so from now on only the
        new certificate opens a session."""
        lifetime = dt.timedelta(seconds=self.core.config.enrollment.certificate_lifetime_s)
        issued = self.core.ca.sign_node(csr_pem, node_id, lifetime)
        async with self.core.store.write() as conn:
            if not await nodes_store.set_cert_serial(conn, node_id, issued.serial, self.core.clock()):
                raise NotFound(f"node {node_id} does not exist")
        log.info("node certificate renewed", node_id=node_id, serial=issued.serial)
        return issued.pem

    async def issue_join_token(self, node_id: str) -> tuple[str, float]:
        token_id, secret, token = self._new_join_token()
        now = self.core.clock()
        expires = now + self.core.config.enrollment.join_token_ttl_s
        async with self.core.store.write() as conn:
            if await nodes_store.get_node(conn, node_id) is None:
                raise NotFound(f"node {node_id} does not exist", field="node_id")
            await nodes_store.replace_join_token(
                conn,
                node_id=node_id,
                token_id=token_id,
                digest=tokens.digest(secret),
                now=now,
                expires_at=expires,
            )
        return token, expires

    async def enroll(
        self, token_id: str, token_secret: str, csr_pem: bytes, agent_version: str
    ) -> Enrollment:
        """Trade a valid join token for a node certificate. The token is used up in the same transaction
        that records the certificate, so a token enrolls exactly one agent."""
        now = self.core.clock()
        lifetime = dt.timedelta(seconds=self.core.config.enrollment.certificate_lifetime_s)
        async with self.core.store.write() as conn:
            row = await nodes_store.get_join_token(conn, token_id)
            if row is None or not tokens.same_digest(row.digest, tokens.digest(token_secret)):
                raise Unauthorized("the join token is not known to this coordinator")
            if row.used_at is not None:
                raise Unauthorized("the join token was already used; issue a new one for this node")
            if row.expires_at <= now:
                raise Unauthorized("the join token has expired; issue a new one for this node")
            try:
                issued = self.core.ca.sign_node(csr_pem, row.node_id, lifetime)
            except CertificateRequestError as exc:
                raise BadRequest(str(exc), field="csr_pem") from exc
            if not await nodes_store.use_join_token(conn, token_id, now):
                raise Unauthorized("the join token was already used; issue a new one for this node")
            await nodes_store.mark_enrolled(
                conn, row.node_id, cert_serial=issued.serial, agent_version=agent_version, now=now
            )
        return Enrollment(row.node_id, issued.pem, self.core.ca.cert_pem)
