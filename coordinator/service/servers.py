"""The servers dialect's use cases (seed 002, the Drone autoscaler's server API): provision by size with a
per-server identity, find and list by name, terminate.

A server is an instance with a row in ``servers``: a unique name, its own CA and a certificate for its name
and its node's address, and a secret. The identity is made for the node the claim takes and written in the
claim's transaction, so a server never exists without it; the keys and the secret are sealed at rest."""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass, replace

from coordinator.catalogs.sizes import Size
from coordinator.domain.records import Instance, InstanceState, Principal, ServerIdentity
from coordinator.placement.scheduler import NodeInfo
from coordinator.security.pki import issue_server_tls
from coordinator.service import policy
from coordinator.service.core import Core
from coordinator.service.deploy import DeployOrder, DeployService, Finish
from coordinator.service.errors import BadRequest, Conflict, NotFound
from coordinator.service.instances import InstanceService
from coordinator.store import instances as instances_store
from coordinator.store import servers as servers_store
from coordinator.store.claims import ClaimRefused, Statement

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_ALPHABET = string.ascii_lowercase + string.digits


def generated_name() -> str:
    """``agent-`` and 8 random characters, as the autoscaler names its servers."""
    return "agent-" + "".join(secrets.choice(_ALPHABET) for _ in range(8))


@dataclass(frozen=True, slots=True)
class SizedOrder:
    """An order by catalog size, as the servers and client dialects place them; ``None`` takes the
    coordinator's ``servers:`` default."""

    name: str
    image: str | None
    region: str | None
    size: str | None


def deploy_order(core: Core, want: SizedOrder, finish: Finish | None) -> DeployOrder:
    defaults = core.config.servers
    image = want.image or defaults.image
    region = want.region or defaults.region
    size_name = want.size or defaults.size
    for key, value in (("image", image), ("size", size_name)):
        if not value:
            raise BadRequest(f"{key}: is required (the coordinator has no servers.{key} default)", field=key)
    size = core.sizes.get(size_name)
    if size is None:
        known = ", ".join(s.name for s in core.sizes.listed()) or "none configured"
        raise BadRequest(f"size: unknown size {size_name!r} (sizes: {known})", field="size")
    return DeployOrder(
        image=image,
        memory_mib=size.memory,
        cpu_percent=size.cpu,
        disk_mib=size.disk,
        name=want.name,
        region=region or None,
        size=size.name,
        finish=finish,
        bandwidth_mbps=size.bandwidth,
        # Neither asked for nor configured: any region with room, or a node in no region.
        anywhere=not region,
    )


@dataclass(frozen=True, slots=True)
class Where:
    """Where an instance runs, as the servers and client dialects show it."""

    region: str  # identifier ("" when it has none)
    country: str  # ISO-3166 alpha-2 ("" when its region names none)
    host: str  # the node's address
    port: int  # the primary allocation's port (0 when it holds none)
    node_name: str = ""
    bind_address: str = ""  # the primary allocation's

    @property
    def address(self) -> str:
        if not self.host:
            return ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}" if self.port else host


async def where(core: Core, found: Sequence[Instance]) -> dict[str, Where]:
    async with core.store.read() as conn:
        by_region, by_node = await servers_store.places(
            conn, {i.region_id for i in found if i.region_id}, {i.node_id for i in found if i.node_id}
        )
    out: dict[str, Where] = {}
    for inst in found:
        region, country = by_region.get(inst.region_id or "", ("", None))
        host, node_name = by_node.get(inst.node_id or "", ("", ""))
        primary = inst.primary
        out[inst.id] = Where(
            region,
            country or "",
            host,
            primary.port if primary else 0,
            node_name,
            primary.bind_address if primary else "",
        )
    return out


class ServerService:
    def __init__(self, core: Core, deploys: DeployService, instances: InstanceService) -> None:
        self.core = core
        self.deploys = deploys
        self.instances = instances

    # ------------------------------------------------------------ reads

    async def where(self, found: Sequence[Instance]) -> dict[str, Where]:
        """Where each instance runs (region, country, address), as the servers, client and vpn dialects
        show it."""
        return await where(self.core, found)

    def size(self, name: str | None) -> Size | None:
        return self.core.sizes.get(name or "")

    @property
    def provider(self) -> str:
        """What the servers dialect calls the provider (servers.provider in the config)."""
        return self.core.config.servers.provider

    @property
    def platform(self) -> str:
        return self.core.config.servers.platform

    async def find(self, caller: Principal, name: str) -> Instance:
        async with self.core.store.read() as conn:
            instance_id = await servers_store.instance_id_by_name(conn, name)
        if instance_id is None:
            raise NotFound(f"server {name} does not exist", field="name")
        inst = await self.instances.get_unchecked(instance_id, field="name")
        policy.check_visible(caller, inst.organization_id, f"server {name}", field="name")
        return inst

    async def list(self, caller: Principal) -> list[Instance]:
        async with self.core.store.read() as conn:
            ids = await servers_store.server_instance_ids(
                conn, None if caller.admin else caller.organization_id
            )
            found = await instances_store.instances_by_ids(conn, ids)
        return [self.core.fleet.overlay(i) for i in found]

    def removing(self, instance_id: str) -> bool:
        """Whether a releasing server's agent has been told to remove it (the dialect says "stopping")."""
        return instance_id in self.core.fleet.removing

    def opened(self, caller: Principal, inst: Instance) -> ServerIdentity:
        """The identity as the caller may see it: the keys and the secret for the server's owner and
        admins; colleagues who may look at it get the public certificates only."""
        opened = self.core.opened(inst)
        assert opened is not None, "a server always has its identity"
        if caller.admin or caller.user_id == inst.owner_id:
            return opened
        return replace(opened, secret="", ca_key="", tls_key="")

    # ------------------------------------------------------------ provision

    async def provision(
        self, caller: Principal, name: str | None, image: str | None, region: str | None, size: str | None
    ) -> Instance:
        if name is not None and not NAME.fullmatch(name):
            raise BadRequest(
                "name: 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit",
                field="name",
            )
        chosen = name or await self._free_name()
        async with self.core.store.read() as conn:
            if await servers_store.name_in_use(conn, chosen):
                raise Conflict(f"name: a server named {chosen} exists", field="name")
        secret = secrets.token_urlsafe(32)

        def finish(inst: Instance, node: NodeInfo) -> tuple[Instance, list[Statement]]:
            # Made for the node this claim takes: the certificate names the server and that node's address.
            tls = issue_server_tls(chosen, node.address)
            seal = self.core.sealer.seal
            identity = ServerIdentity(
                chosen,
                seal(secret.encode(), inst.id),
                seal(tls.ca_key, inst.id),
                tls.ca_cert.decode(),
                seal(tls.tls_key, inst.id),
                tls.tls_cert.decode(),
            )
            return replace(inst, server=identity), [
                servers_store.free_released_name(chosen),
                servers_store.insert_server(inst.id, identity),
            ]

        order = deploy_order(self.core, SizedOrder(chosen, image, region, size), finish)
        try:
            deployed = await self.deploys.deploy(caller, order)
        except ClaimRefused as exc:  # the name was taken between the check and the claim
            raise Conflict(f"name: a server named {chosen} exists", field="name") from exc
        return deployed.instance

    async def _free_name(self) -> str:
        async with self.core.store.read() as conn:
            while True:
                name = generated_name()
                if not await servers_store.name_in_use(conn, name):
                    return name

    # ------------------------------------------------------------ terminate

    async def terminate(self, caller: Principal, name: str, force: bool) -> Instance | None:
        """A failed server with ``force`` is removed outright (None: nothing left to show). Otherwise the
        server is released without waiting for its agent: the answer shows it shutting down, and it reads
        stopping, then stopped, as the agent stops and removes the container."""
        inst = await self.find(caller, name)
        policy.check_owner(caller, inst.owner_id, inst.organization_id, f"server {name}", field="name")
        if inst.state is InstanceState.ERROR and force:
            await self.instances.release([inst], wait=False)
            async with self.core.store.write() as conn:
                await servers_store.delete_server(conn, inst.id)
            self.core.fleet.forget_instance(inst.id)
            return None
        if inst.state in (InstanceState.RELEASING, InstanceState.RELEASED):
            return inst
        await self.instances.release([inst], wait=False)
        if inst.state is InstanceState.ERROR:  # released at once: nothing of it runs
            return await self.instances.get_unchecked(inst.id)
        # What was asked and is now durable; the agent works on it from here (a fast one may be done by the
        # time a re-read ran, and the answer would not say that the shutdown started).
        return replace(inst, state=InstanceState.RELEASING, updated_at=self.core.clock())
