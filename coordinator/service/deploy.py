"""Deploying: resolve the image, pick where (the node asked for, or placement through the region chain),
claim it in one short transaction, tell the agent. Shared by every dialect that creates instances."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from common.logging import get
from coordinator.catalogs.images import VariableError
from coordinator.domain.agents import CommandKind
from coordinator.domain.records import Instance, Principal, time_ordered_id
from coordinator.placement.scheduler import (
    Candidate,
    Decision,
    NodeInfo,
    Refusal,
    Request,
    Snapshot,
    Strategy,
    best_nodes,
    place,
)
from coordinator.service.core import Core
from coordinator.service.errors import BadRequest, Conflict, Forbidden, Unavailable
from coordinator.store import events as events_store
from coordinator.store import instances as instances_store
from coordinator.store import regions as regions_store
from coordinator.store import users as users_store
from coordinator.store.claims import ClaimLost, ClaimQueue, Statement

log = get("coordinator.deploy")

#: A stale snapshot can lose every race; placement is re-run from a fresh one this many times.
SNAPSHOT_ATTEMPTS = 3

#: Given the node a claim is about to take: the instance as it will be stored there (e.g. with a TLS
#: identity for that node's address) and further rows written in the claim's transaction (or not at all).
Finish = Callable[[Instance, NodeInfo], tuple[Instance, Sequence[Statement]]]


@dataclass(frozen=True, slots=True)
class DeployOrder:
    image: str
    memory_mib: int
    cpu_percent: int
    name: str
    node_id: str | None = None
    #: Region id or identifier; placement follows its fallback chain.
    region: str | None = None
    ports: tuple[int, ...] = ()
    primary: int | None = None
    owner_id: str | None = None
    variables: dict[str, str] = field(default_factory=dict)
    disk_mib: int = 0
    #: Placement: only nodes carrying every one of these tags.
    tags: frozenset[str] = frozenset()
    #: The catalog size it was ordered by (kept on the instance for usage reports).
    size: str | None = None
    finish: Finish | None = None
    #: Bandwidth cap each way, Mbps (0: none).
    bandwidth_mbps: int = 0
    #: When it expires (None: the coordinator's instances.default_lifetime_s from now, if set).
    expires_at: float | None = None
    #: A redeploy: the instance it replaces, and how many more redeploys the new one allows.
    replaces_id: str | None = None
    redeploy_max_count: int = 1
    #: The catalog entry whose variables, startup and stop signal apply when ``image`` is a Docker
    #: reference of its own (Skyport's deploy names both: `imagename` and `image`).
    catalog_image: str | None = None
    #: Neither node nor region: any region with room (least full first), then the nodes in no region.
    anywhere: bool = False


@dataclass(frozen=True, slots=True)
class ResolvedImage:
    name: str
    reference: str
    command: list[str]
    stop_signal: str
    env: dict[str, str]


@dataclass(frozen=True, slots=True)
class Deployed:
    instance: Instance
    region_identifier: str | None
    fallback_used: bool


class DeployService:
    def __init__(self, core: Core, strategy: Strategy = Strategy.SPREAD) -> None:
        self.core = core
        self.strategy = strategy
        self.claims = ClaimQueue(core.store)

    def resolve_image(
        self, image: str, variables: dict[str, str], organization_id: int, catalog_image: str | None = None
    ) -> ResolvedImage:
        """``image`` is a catalog name or a Docker reference; with ``catalog_image``, that entry applies and
        ``image`` is the reference to run (one of the entry's, or another the caller prefers)."""
        field = "catalog_image" if catalog_image is not None else "image"
        name = catalog_image if catalog_image is not None else image
        entry = self.core.catalog.get(name)
        if catalog_image is not None and (entry is None or not entry.offered_to(organization_id)):
            raise BadRequest(f"catalog_image: {catalog_image!r} is not in the image catalog", field=field)
        if entry is not None and not entry.offered_to(organization_id):
            raise BadRequest(
                f"image: catalog image {image!r} is not offered to organization {organization_id}",
                field="image",
            )
        if entry is not None:
            reference = entry.image
            if catalog_image is not None and image != entry.name:
                if not self.core.catalog.is_reference(image):
                    raise BadRequest(f"image: {image!r} is not a Docker reference", field="image")
                reference = image
            try:
                env = self.core.catalog.resolve_variables(entry, variables)
            except VariableError as exc:
                raise BadRequest(str(exc), field=exc.field) from exc
            return ResolvedImage(entry.name, reference, list(entry.startup), entry.stop_signal, env)
        if not self.core.catalog.is_reference(image):
            raise BadRequest(
                f"image: {image!r} is neither a catalog image nor a Docker reference", field="image"
            )
        return ResolvedImage(image, image, [], "SIGTERM", dict(variables))

    async def deploy(self, caller: Principal, order: DeployOrder) -> Deployed:
        if (order.node_id is None) == (order.region is None) and not (
            order.anywhere and order.node_id is None
        ):
            raise BadRequest("node_id: give a nodeId or a regionId (one of them)", field="node_id")
        if order.primary is not None and order.ports and order.primary not in order.ports:
            raise BadRequest(f"primary: {order.primary} is not one of the ports asked for", field="primary")
        if order.primary is not None and not order.ports:
            raise BadRequest("primary: give ports when naming a primary port", field="primary")
        owner_id = order.owner_id or caller.user_id
        if owner_id != caller.user_id and not caller.admin:
            raise Forbidden("user: only an admin may deploy for another user", field="user")
        owner: Principal | None = caller
        if owner_id != caller.user_id:
            async with self.core.store.read() as conn:
                owner = await users_store.get_principal(conn, owner_id)
        if owner is None:
            raise BadRequest(f"user: user {owner_id} does not exist", field="user")
        image = self.resolve_image(order.image, order.variables, owner.organization_id, order.catalog_image)
        request = Request(
            memory_mib=order.memory_mib,
            cpu_percent=order.cpu_percent,
            disk_mib=order.disk_mib,
            tags=order.tags,
            ports=order.ports,
            port_count=1,
            organization_id=owner.organization_id,
        )
        draft = Instance(
            id=time_ordered_id(),
            name=order.name,
            organization_id=owner.organization_id,
            owner_id=owner.user_id,
            image=image.name,
            image_ref=image.reference,
            memory_mib=order.memory_mib,
            cpu_percent=order.cpu_percent,
            disk_mib=order.disk_mib,
            env=image.env,
            command=image.command,
            stop_signal=image.stop_signal,
            size=order.size,
            bandwidth_mbps=order.bandwidth_mbps,
            expires_at=order.expires_at,
            replaces_id=order.replaces_id,
            redeploy_max_count=order.redeploy_max_count,
        )
        try:
            if order.node_id is not None:
                placed = await self._on_node(caller, draft, order, request)
            elif order.region is not None:
                placed = await self._in_region(draft, order, request)
            else:
                placed = await self._anywhere(draft, order, request)
        except (Conflict, Unavailable) as exc:
            await self._refused(draft, order, exc)
            raise
        if placed.node_id:
            # When it is away nothing is lost: the agent gets its desired set in its next Welcome.
            self.core.agents.post(placed.node_id, self.core.command(CommandKind.DEPLOY, placed.instance))
        return Deployed(placed.instance, placed.region_identifier, placed.fallback_used)

    async def _refused(self, draft: Instance, order: DeployOrder, exc: Conflict | Unavailable) -> None:
        """No room where it was asked for: an event for the organization (a panel sees why its deploy
        bounced; an operator sees a region running out before anyone complains)."""
        data = {
            "reason": str(exc),
            "field": exc.field,
            "regionId": order.region,
            "memoryMib": draft.memory_mib,
            "cpuPercent": draft.cpu_percent,
            "unreachable": isinstance(exc, Unavailable),
        }
        try:
            async with self.core.store.write() as conn:
                await events_store.record(
                    conn,
                    "placement.refused",
                    at=self.core.clock(),
                    data=data,
                    organization_id=draft.organization_id,
                    node_id=order.node_id,
                )
        except Exception:  # the caller's answer is the refusal, whatever became of its event
            log.exception("recording a refused placement failed")

    # ------------------------------------------------------------ where

    async def _on_node(self, caller: Principal, draft: Instance, order: DeployOrder, req: Request) -> _Placed:
        """The node is named: no readiness needed (the agent gets it when it connects), but every other
        rule holds: resources, ports, the region's serverLimit."""
        assert order.node_id is not None
        async with self.core.store.read() as conn:
            infos = await regions_store.node_infos(conn, node_id=order.node_id, ports=order.ports)
            node = infos[0] if infos else None
            if node is None or not (caller.admin or req.may_use(node)):
                raise BadRequest(f"node_id: node {order.node_id} does not exist", field="node_id")
            if not req.may_use(node):
                raise BadRequest(
                    f"node_id: node {node.name} is dedicated to organization {node.organization_id}; the "
                    f"instance's owner is in organization {req.organization_id}",
                    field="node_id",
                )
            region = await regions_store.get_region(conn, node.region_id) if node.region_id else None
            if order.ports:
                free, unknown = await instances_store.free_allocations_by_port(conn, node.id, order.ports)
                if unknown:
                    raise BadRequest(
                        f"ports: {', '.join(map(str, unknown))} not allocations of node {node.id}",
                        field="ports",
                    )
                taken = [p for p in order.ports if p not in free]
                if taken:
                    raise Conflict(f"ports: {', '.join(map(str, taken))} already assigned", field="ports")
        if node.maintenance:
            raise Conflict(f"node_id: node {node.name} is in maintenance", field="node_id")
        self._check_image_on_node(node.id, draft.image_ref)
        if not order.ports and node.free_port_count < 1:
            raise Conflict(f"ports: node {node.id} has no free allocation", field="ports")
        for what, short in (
            ("memory", node.free_memory() < req.memory_mib),
            ("cpu", node.free_cpu() < req.cpu_percent),
            ("disk", node.free_disk() < req.disk_mib),
        ):
            if short:
                raise Conflict(f"{what}: node {node.name} has not enough {what} free", field=what)
        if region is not None and region.info().full:
            raise Conflict(
                f"node_id: region {region.identifier} is at its serverLimit {region.server_limit}",
                field="node_id",
            )
        candidate = Candidate(node, region.info(), False) if region else None
        placed = await self._claim(draft, node, candidate, order)
        if placed is None:
            raise Conflict(
                "ports: the node's resources or ports were taken by another deploy; retry", field="ports"
            )
        return placed

    async def _in_region(self, draft: Instance, order: DeployOrder, req: Request) -> _Placed:
        assert order.region is not None
        asked = self.core.snapshot.clock()
        fresh_since: float | None = None
        attempts = 0
        while True:
            decision = await self._decide(order.region, req, fresh_since)
            if isinstance(decision, Refusal):
                if fresh_since is None:
                    # The view may lag a release: only a refusal read from the database stands.
                    fresh_since = asked
                    continue
                error = Unavailable if decision.unreachable else Conflict
                raise error(f"region: no placement: {decision.message}", field="region")
            for candidate in decision.candidates:
                if not self._may_run(candidate.node.id, draft.image_ref):
                    continue
                placed = await self._claim(draft, candidate.node, candidate, order)
                if placed is not None:
                    return placed
            attempts += 1
            if attempts == SNAPSHOT_ATTEMPTS:
                raise Conflict(
                    "region: every candidate was taken by concurrent deploys; retry", field="region"
                )

    async def _anywhere(self, draft: Instance, order: DeployOrder, req: Request) -> _Placed:
        """No region asked for or configured: every region in turn, the one with the most room first
        (its fallbacks follow it as usual), then the Ready nodes that are in no region."""
        regions = await self.core.snapshot.regions()
        reasons: list[str] = []
        unreachable = True
        by_room = sorted(
            regions.values(), key=lambda r: (r.full, r.live_count / r.server_limit, r.identifier)
        )
        for region in by_room:
            try:
                return await self._in_region(draft, replace(order, region=region.id), req)
            except BadRequest:
                continue  # deleted meanwhile
            except (Conflict, Unavailable) as exc:
                unreachable = unreachable and isinstance(exc, Unavailable)
                reasons.append(exc.detail.removeprefix("no placement: "))
        async with self.core.store.read() as conn:
            loose = [
                n for n in await regions_store.node_infos(conn, ports=order.ports) if n.region_id is None
            ]
        for node in best_nodes(loose, req, self.core.fleet.ready, self.strategy):
            if self._may_run(node.id, draft.image_ref):
                placed = await self._claim(draft, node, None, order)
                if placed is not None:
                    return placed
        if loose:
            unreachable = unreachable and not any(n.id in self.core.fleet.ready for n in loose)
            reasons.append("nodes in no region: none Ready with room")
        error = Unavailable if unreachable else Conflict
        found = "; ".join(dict.fromkeys(reasons)) or "no region and no node"
        raise error(f"region: no placement anywhere: {found}", field="region")

    async def _decide(self, region_key: str, req: Request, fresh_since: float | None) -> Decision | Refusal:
        start = await self.core.snapshot.find(region_key)
        if start is None:
            raise BadRequest(f"region: region {region_key} does not exist", field="region")
        snapshot = await self.core.snapshot.for_chain(start.id, self.core.fleet.ready, fresh_since)
        if req.ports:
            # Which specific ports are free is not in the view: read it for the chain's nodes.
            async with self.core.store.read() as conn:
                free = await regions_store.free_ports(conn, list(snapshot.nodes_by_region), req.ports)
            by_region = {
                rid: [replace(n, free_ports=free.get(n.id, frozenset())) for n in nodes]
                for rid, nodes in snapshot.nodes_by_region.items()
            }
            snapshot = Snapshot(snapshot.regions, by_region, snapshot.ready)
        return place(req, start.id, snapshot, self.strategy)

    async def _claim(
        self, draft: Instance, node: NodeInfo, candidate: Candidate | None, order: DeployOrder
    ) -> _Placed | None:
        now = self.core.clock()
        lifetime = self.core.config.instances.default_lifetime_s
        inst = _with(draft, node.id, candidate.region.id if candidate else None, now, lifetime)
        region_id = candidate.region.id if candidate else None
        extra: Sequence[Statement] = ()
        if order.finish is not None:
            inst, extra = order.finish(inst, node)
        try:
            held = await self.claims.claim(
                inst, ports=order.ports, port_count=1, primary=order.primary, extra=extra
            )
        except ClaimLost:
            if region_id is not None:
                await self.core.snapshot.lost(region_id, node.id)
            return None
        if region_id is not None:
            self.core.snapshot.claimed(
                region_id, node, inst.memory_mib, inst.cpu_percent, inst.disk_mib, len(held)
            )
        created = replace(inst, allocations=held)
        return _Placed(
            created,
            node.id,
            candidate.region.identifier if candidate else None,
            candidate.fallback if candidate else False,
        )

    def _may_run(self, node_id: str, reference: str) -> bool:
        try:
            self._check_image_on_node(node_id, reference)
        except BadRequest:
            return False
        return True

    def _check_image_on_node(self, node_id: str, reference: str) -> None:
        """Refuse early when the node told us it lacks the image and may not pull it."""
        known = self.core.fleet.image_policy(node_id)
        if known is None or known[1] != "never":
            return
        last = reference.rsplit("/", 1)[-1]
        wanted = reference if ":" in last or "@" in reference else f"{reference}:latest"
        if wanted not in known[0]:
            raise BadRequest(
                f"image: {reference} is not present on node {node_id} and its agent may not pull images",
                field="image",
            )


@dataclass(frozen=True, slots=True)
class _Placed:
    instance: Instance
    node_id: str | None
    region_identifier: str | None
    fallback_used: bool


def _with(draft: Instance, node_id: str, region_id: str | None, now: float, lifetime_s: float) -> Instance:
    expires_at = draft.expires_at
    if expires_at is None and lifetime_s > 0:
        expires_at = now + lifetime_s
    return replace(
        draft,
        node_id=node_id,
        region_id=region_id,
        created_at=now,
        updated_at=now,
        state_changed_at=now,
        expires_at=expires_at,
    )
