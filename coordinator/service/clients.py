"""The client dialect's use cases (seed 003, FlexMetal's client API): a client's servers with filters and
pages, release, tags, usage for billing, and ordering a server.

The client is the organization of DESIGN.md: a caller of another organization is refused (403), a server
that is not this client's is not found (404). A client's tags exist on their own and servers carry them;
the database cascades a rename or delete to every server, so no server keeps a tag its client no longer
has."""

from __future__ import annotations

import re
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.domain.records import Instance, InstanceState, Principal
from coordinator.placement.scheduler import NodeInfo
from coordinator.service import policy
from coordinator.service.core import Core
from coordinator.service.deploy import DeployService
from coordinator.service.errors import BadRequest, Conflict, Forbidden, NotFound
from coordinator.service.instances import InstanceService
from coordinator.service.servers import SizedOrder, deploy_order
from coordinator.store import instances as instances_store
from coordinator.store import servers as servers_store
from coordinator.store import users as users_store
from coordinator.store.claims import ClaimRefused, Statement

TAG = re.compile(r"^[A-Za-z0-9_:-]{1,64}$")
#: The most tags one server carries.
MAX_TAGS = 60
T = TypeVar("T")


def check_tag(tag: str, field: str = "tag") -> str:
    if not TAG.fullmatch(tag):
        raise BadRequest(f"{field}: {tag[:80]!r} must match ^[A-Za-z0-9_:-]{{1,64}}$", field=field)
    return tag


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    total: int
    page: int
    limit: int


@dataclass(frozen=True, slots=True)
class TagInfo:
    tag: str
    created_at: float
    servers: int


@dataclass(frozen=True, slots=True)
class Usage:
    instance: Instance
    #: Seconds within the window between delivery and release (or the window's end).
    billable_s: int


class ClientService:
    def __init__(self, core: Core, deploys: DeployService, instances: InstanceService) -> None:
        self.core = core
        self.deploys = deploys
        self.instances = instances

    async def check_client(self, caller: Principal, client_id: int) -> None:
        policy.check_organization(caller, client_id)
        if caller.admin and caller.organization_id != client_id:
            async with self.core.store.read() as conn:
                if not await users_store.organization_exists(conn, client_id):
                    raise NotFound(f"client {client_id} does not exist", field="client_id")

    # ------------------------------------------------------------ servers

    async def list_servers(
        self,
        caller: Principal,
        client_id: int,
        *,
        page: int,
        limit: int,
        states: Collection[InstanceState] | None,
        tags: Sequence[str],
    ) -> Page[Instance]:
        await self.check_client(caller, client_id)
        for tag in tags:
            check_tag(tag, "filter.tag")
        async with self.core.store.read() as conn:
            ids, total = await servers_store.page_instance_ids(
                conn, client_id, states=states, tags=tags, offset=(page - 1) * limit, limit=limit
            )
            found = await instances_store.instances_by_ids(conn, ids)
        return Page([self.core.fleet.overlay(i) for i in found], total, page, limit)

    async def get_server(self, caller: Principal, client_id: int, server_id: str) -> Instance:
        await self.check_client(caller, client_id)
        async with self.core.store.read() as conn:
            inst = await instances_store.get_instance(conn, server_id)
        if inst is None or inst.organization_id != client_id:
            raise NotFound(f"server {server_id} of client {client_id} does not exist", field="instance_id")
        return self.core.fleet.overlay(inst)

    async def release_server(self, caller: Principal, client_id: int, server_id: str) -> Instance:
        inst = await self.get_server(caller, client_id, server_id)
        policy.check_owner(
            caller, inst.owner_id, inst.organization_id, f"server {server_id}", field="instance_id"
        )
        if inst.state in (InstanceState.RELEASING, InstanceState.RELEASED):
            raise Conflict(
                f"instance_id: server {server_id} is already {inst.state.value}", field="instance_id"
            )
        await self.instances.release([inst])
        return await self.instances.get_unchecked(inst.id)

    async def order(
        self,
        caller: Principal,
        client_id: int,
        *,
        name: str | None,
        size: str | None,
        location: str | None,
        image: str | None,
        tags: Sequence[str],
    ) -> Instance:
        await self.check_client(caller, client_id)
        if caller.organization_id != client_id:
            raise Forbidden(
                f"client_id: an order is owned by a user of client {client_id}; order with one of its keys",
                field="client_id",
            )
        wanted = sorted({check_tag(t, "tags") for t in tags})
        if len(wanted) > MAX_TAGS:
            raise BadRequest(f"tags: at most {MAX_TAGS} tags a server", field="tags")

        def finish(inst: Instance, node: NodeInfo) -> tuple[Instance, list[Statement]]:
            return inst, servers_store.tag_statements(client_id, inst.id, wanted, self.core.clock())

        chosen = name or f"server-{secrets.token_hex(4)}"
        order = deploy_order(self.core, SizedOrder(chosen, image, location, size), finish)
        try:
            deployed = await self.deploys.deploy(caller, order)
        except ClaimRefused as exc:  # a tag deleted while the order was placed
            raise Conflict(
                f"tags: a tag changed while the order was placed; retry ({exc})", field="tags"
            ) from exc
        return await self.instances.get_unchecked(deployed.instance.id)

    # ------------------------------------------------------------ a server's tags

    async def _own_server(self, caller: Principal, client_id: int, server_id: str) -> Instance:
        """A server the caller may change: its owner's, or an admin's."""
        inst = await self.get_server(caller, client_id, server_id)
        policy.check_owner(
            caller, inst.owner_id, inst.organization_id, f"server {server_id}", field="instance_id"
        )
        return inst

    async def tag_server(self, caller: Principal, client_id: int, server_id: str, tag: str) -> Instance:
        check_tag(tag)
        inst = await self._own_server(caller, client_id, server_id)
        async with self.core.store.write() as conn:
            added = await servers_store.add_instance_tag(
                conn, client_id, inst.id, tag, self.core.clock(), MAX_TAGS
            )
        if added == "full":
            raise BadRequest(
                f"tag: server {server_id} carries {MAX_TAGS} tags, the most a server may", field="tag"
            )
        return await self.get_server(caller, client_id, server_id)

    async def untag_server(self, caller: Principal, client_id: int, server_id: str, tag: str) -> Instance:
        check_tag(tag)
        inst = await self._own_server(caller, client_id, server_id)
        async with self.core.store.write() as conn:
            if not await servers_store.remove_instance_tag(conn, inst.id, tag):
                raise NotFound(f"tag: server {server_id} does not carry the tag {tag}", field="tag")
        return await self.get_server(caller, client_id, server_id)

    # ------------------------------------------------------------ the client's tags

    async def list_tags(self, caller: Principal, client_id: int, *, page: int, limit: int) -> Page[TagInfo]:
        await self.check_client(caller, client_id)
        async with self.core.store.read() as conn:
            rows, total = await servers_store.tag_rows(
                conn, client_id, offset=(page - 1) * limit, limit=limit
            )
        return Page([_tag(r) for r in rows], total, page, limit)

    async def get_tag(self, caller: Principal, client_id: int, tag: str) -> tuple[TagInfo, list[str]]:
        """The tag and the servers carrying it (oldest first)."""
        check_tag(tag)
        await self.check_client(caller, client_id)
        async with self.core.store.read() as conn:
            rows, _ = await servers_store.tag_rows(conn, client_id, tag=tag)
            if not rows:
                raise NotFound(f"tag: client {client_id} has no tag {tag}", field="tag")
            return _tag(rows[0]), await servers_store.tagged_instance_ids(conn, client_id, tag)

    async def create_tag(self, caller: Principal, client_id: int, tag: str) -> TagInfo:
        check_tag(tag)
        await self.check_client(caller, client_id)
        async with self.core.store.write() as conn:
            created = await servers_store.ensure_tag(conn, client_id, tag, self.core.clock())
        if not created:
            raise Conflict(f"tag: client {client_id} has the tag {tag} already", field="tag")
        return (await self.get_tag(caller, client_id, tag))[0]

    async def _may_change_tag(
        self, conn: AsyncConnection, caller: Principal, client_id: int, tag: str
    ) -> None:
        """A tag reaches every server carrying it: changing it is for an admin, or for a user whose own
        servers are all it is on (a colleague may not retag the owner's servers, as they may not tag one)."""
        if caller.admin:
            return
        tagged = await servers_store.tagged_instance_ids(conn, client_id, tag)
        owners = {i.owner_id for i in await instances_store.instances_by_ids(conn, tagged)}
        if owners - {caller.user_id}:
            raise Forbidden(
                f"tag: {tag} is on servers of other users; only their owners or an admin may change it",
                field="tag",
            )

    async def rename_tag(self, caller: Principal, client_id: int, tag: str, new: str) -> TagInfo:
        check_tag(tag)
        check_tag(new)
        await self.check_client(caller, client_id)
        if new != tag:
            try:
                async with self.core.store.write() as conn:
                    await self._may_change_tag(conn, caller, client_id, tag)
                    if not await servers_store.rename_tag(conn, client_id, tag, new):
                        raise NotFound(f"tag: client {client_id} has no tag {tag}", field="tag")
            except IntegrityError as exc:
                raise Conflict(f"tag: client {client_id} has a tag {new} already", field="tag") from exc
        return (await self.get_tag(caller, client_id, new))[0]

    async def delete_tag(self, caller: Principal, client_id: int, tag: str) -> None:
        check_tag(tag)
        await self.check_client(caller, client_id)
        async with self.core.store.write() as conn:
            await self._may_change_tag(conn, caller, client_id, tag)
            if not await servers_store.delete_tag(conn, client_id, tag):
                raise NotFound(f"tag: client {client_id} has no tag {tag}", field="tag")

    # ------------------------------------------------------------ usage

    async def usage(
        self,
        caller: Principal,
        client_id: int,
        *,
        start: float | None,
        end: float | None,
        page: int,
        limit: int,
    ) -> tuple[Page[Usage], int]:
        """Every server of the client that ran within [start, end) (delivered before its end, not released
        before its start), with the whole seconds it ran inside the window, and the window's end (``end``
        defaults to now). Every time is cut to its whole second first, as the answers show them, so the
        seconds add up across adjacent windows and match the shown delivery and release times."""
        await self.check_client(caller, client_id)
        now = int(self.core.clock())
        lo = int(start) if start is not None else 0
        hi = int(end) if end is not None else now
        if hi < lo:
            raise BadRequest(
                "released_at: the window ends before it starts (deliveredAt)", field="released_at"
            )
        async with self.core.store.read() as conn:
            ids, total = await servers_store.page_billable_ids(
                conn, client_id, lo, hi, offset=(page - 1) * limit, limit=limit
            )
            found = await instances_store.instances_by_ids(conn, ids)
        rows = []
        for inst in found:
            assert inst.delivered_at is not None
            ran_until = min(int(inst.released_at) if inst.released_at is not None else now, hi)
            billable = max(0, ran_until - max(int(inst.delivered_at), lo))
            rows.append(Usage(self.core.fleet.overlay(inst), billable))
        return Page(rows, total, page, limit), hi


def _tag(row: dict[str, Any]) -> TagInfo:
    return TagInfo(row["tag"], row["created_at"], int(row["servers"]))
