"""Instance use cases shared by every dialect: deploy, show, list and delete (release)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.commands import command
from coordinator.model import LIVE_STATES, Instance, InstanceState
from coordinator.service import policy
from coordinator.service.core import Core
from coordinator.service.errors import BadRequest, Conflict, Forbidden, NotFound
from coordinator.store import instances as instances_store
from coordinator.store import nodes as nodes_store
from coordinator.store import users as users_store
from coordinator.store.users import Principal
from protos import moorage_pb2 as pb


@dataclass(frozen=True, slots=True)
class DeployOrder:
    image: str
    memory_mib: int
    cpu_percent: int
    node_id: str
    name: str
    ports: tuple[int, ...] = ()
    primary: int | None = None
    owner_id: str | None = None
    variables: dict[str, str] = field(default_factory=dict)
    disk_mib: int = 0


@dataclass(frozen=True, slots=True)
class ResolvedImage:
    name: str
    reference: str
    command: list[str]
    stop_signal: str
    env: dict[str, str]


class InstanceService:
    def __init__(self, core: Core) -> None:
        self.core = core

    # ------------------------------------------------------------ reads

    async def get(self, caller: Principal, instance_id: str, *, field: str = "id") -> Instance:
        async with self.core.store.read() as conn:
            inst = await instances_store.get_instance(conn, instance_id)
        if inst is None:
            raise NotFound(f"instance {instance_id} does not exist", field=field)
        policy.check_visible(caller, inst.organization_id, f"instance {instance_id}", field=field)
        return inst

    async def list_visible(self, caller: Principal, *, owner_id: str | None = None) -> list[Instance]:
        async with self.core.store.read() as conn:
            return await instances_store.list_instances(
                conn, organization_id=None if caller.admin else caller.organization_id, owner_id=owner_id
            )

    # ------------------------------------------------------------ deploy

    def resolve_image(self, image: str, variables: dict[str, str]) -> ResolvedImage:
        entry = self.core.catalog.get(image)
        if entry is not None:
            try:
                env = self.core.catalog.resolve_variables(entry, variables)
            except ValueError as exc:
                raise BadRequest(str(exc), field=str(exc).split(" ", 1)[0]) from exc
            return ResolvedImage(entry.name, entry.image, list(entry.startup), entry.stop_signal, env)
        if not self.core.catalog.is_reference(image):
            raise BadRequest(
                f"image: {image!r} is neither a catalog image nor a Docker reference", field="image"
            )
        return ResolvedImage(image, image, [], "SIGTERM", dict(variables))

    async def deploy(self, caller: Principal, order: DeployOrder) -> Instance:
        image = self.resolve_image(order.image, order.variables)
        owner_id = order.owner_id or caller.user_id
        if owner_id != caller.user_id and not caller.admin:
            raise Forbidden("user: only an admin may deploy for another user", field="user")
        self._check_image_on_node(order.node_id, image.reference)
        now = self.core.clock()
        instance_id = str(uuid.uuid4())
        async with self.core.store.write() as conn:
            owner = await users_store.get_principal(conn, owner_id)
            if owner is None:
                raise BadRequest(f"user: user {owner_id} does not exist", field="user")
            node = await nodes_store.get_node(conn, order.node_id)
            if node is None:
                raise BadRequest(f"nodeId: node {order.node_id} does not exist", field="nodeId")
            if node.maintenance:
                raise Conflict(f"nodeId: node {node.name} is in maintenance", field="nodeId")
            allocation_ids, primary_id = await self._pick_allocations(conn, order)
            inst = Instance(
                id=instance_id,
                name=order.name,
                organization_id=owner.organization_id,
                owner_id=owner.user_id,
                image=image.name,
                image_ref=image.reference,
                memory_mib=order.memory_mib,
                cpu_percent=order.cpu_percent,
                disk_mib=order.disk_mib,
                env=image.env,
                node_id=node.id,
                region_id=node.region_id,
                state=InstanceState.PENDING,
                error=None,
                suspended=False,
                container_id=None,
                created_at=now,
                updated_at=now,
                state_changed_at=now,
                delivered_at=None,
                released_at=None,
                command=image.command,
                stop_signal=image.stop_signal,
            )
            await instances_store.insert_instance(conn, inst)
            if not await instances_store.claim_allocations(conn, instance_id, allocation_ids, primary_id):
                # The transaction rolls back: no instance row, no partial claim.
                raise Conflict("ports: an allocation was taken by another deploy; retry", field="ports")
            created = await instances_store.get_instance(conn, instance_id)
        assert created is not None
        self.core.fleet.dispatch(node.id, command(pb.COMMAND_KIND_DEPLOY, created))
        return created

    def _check_image_on_node(self, node_id: str, reference: str) -> None:
        """Refuse early when the node told us it lacks the image and may not pull it."""
        live = self.core.fleet.live.get(node_id)
        if live is None or live.pull_policy != "never":
            return
        wanted = (
            reference if ":" in reference.rsplit("/", 1)[-1] or "@" in reference else f"{reference}:latest"
        )
        if wanted not in live.images:
            raise BadRequest(
                f"image: {reference} is not present on node {node_id} and its agent may not pull images",
                field="image",
            )

    async def _pick_allocations(self, conn: AsyncConnection, order: DeployOrder) -> tuple[list[str], str]:
        if order.ports:
            free, unknown = await instances_store.free_allocations_by_port(conn, order.node_id, order.ports)
            if unknown:
                raise BadRequest(
                    f"ports: {', '.join(map(str, unknown))} not allocations of node {order.node_id}",
                    field="ports",
                )
            taken = [p for p in order.ports if p not in free]
            if taken:
                raise Conflict(f"ports: {', '.join(map(str, taken))} already assigned", field="ports")
            primary = order.primary if order.primary is not None else order.ports[0]
            if primary not in free:
                raise BadRequest(f"primary: {primary} is not one of the ports asked for", field="primary")
            return [free[p] for p in order.ports], free[primary]
        allocation = await instances_store.first_free_allocation(conn, order.node_id)
        if allocation is None:
            raise Conflict(f"ports: node {order.node_id} has no free allocation", field="ports")
        if order.primary is not None and order.primary != allocation[1]:
            raise BadRequest("primary: give ports when naming a primary port", field="primary")
        return [allocation[0]], allocation[0]

    # ------------------------------------------------------------ delete

    async def delete(self, caller: Principal, instance_id: str) -> Instance:
        """Release: the container is removed, the allocations freed, the row kept for its history. Waits a
        bounded time for the agent so a panel usually reads the final state in the answer."""
        inst = await self.get(caller, instance_id)
        policy.check_owner(caller, inst.owner_id, inst.organization_id, f"instance {instance_id}", field="id")
        await self.release([inst])
        return await self.get(caller, instance_id)

    async def release(self, found: list[Instance]) -> None:
        """Mark each releasing (a failed one released at once: nothing of it runs), ask the agents to remove
        the containers, and wait for their reports a bounded time."""
        now = self.core.clock()
        async with self.core.store.write() as conn:
            for inst in found:
                if inst.state is InstanceState.ERROR:
                    await instances_store.release(conn, inst.id, allowed_from={InstanceState.ERROR}, now=now)
                elif inst.state is not InstanceState.RELEASED:
                    await instances_store.transition(
                        conn, inst.id, InstanceState.RELEASING, allowed_from=LIVE_STATES, now=now
                    )
        waits = []
        for inst in found:
            self.core.fleet.confirmed_running.discard(inst.id)
            if inst.node_id is None or inst.state in (InstanceState.RELEASED, InstanceState.ERROR):
                continue
            cmd = command(pb.COMMAND_KIND_REMOVE, inst)
            if self.core.fleet.dispatch(inst.node_id, cmd):
                waits.append(
                    self.core.fleet.wait_result(cmd.command_id, self.core.config.fleet.command_wait_s)
                )
        await asyncio.gather(*waits)

    async def release_node(self, node_id: str) -> list[str]:
        """Release every live instance of a node that is being deleted. Those its agent did not confirm
        removing (it is offline) are released anyway: once the node is gone nothing can reach them."""
        async with self.core.store.read() as conn:
            found = await instances_store.list_instances(conn, node_id=node_id, states=LIVE_STATES)
        await self.release(found)
        now = self.core.clock()
        async with self.core.store.write() as conn:
            for inst in found:
                await instances_store.release(
                    conn,
                    inst.id,
                    allowed_from={InstanceState.RELEASING},
                    now=now,
                    error="released with its node; the agent did not confirm removal",
                )
        return [inst.id for inst in found]
