"""The vpn dialect's use cases (seed 004, Bingo VPN's open API): an organization's endpoints by their
stable number, renaming, redeploying to another country, and releasing what expired or was replaced.

A redeploy places a new instance with the same configuration (image, variables, resources, bandwidth,
expiry) by country, marks the original Pending Release, and releases it once the new one runs (at once with
force). The release does not depend on anything staying in memory: a sweep finds originals whose
replacement runs, and expired instances, every ``instances.expiry_check_s``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace

import pycountry

from common.logging import get
from coordinator.domain.records import Instance, InstanceState, Principal
from coordinator.placement.scheduler import NodeInfo
from coordinator.service import policy
from coordinator.service.core import Core
from coordinator.service.deploy import DeployOrder, DeployService
from coordinator.service.errors import BadRequest, NotFound
from coordinator.service.instances import InstanceService
from coordinator.service.servers import where
from coordinator.store import instances as instances_store
from coordinator.store import servers as servers_store
from coordinator.store import users as users_store
from coordinator.store import vpn as vpn_store
from coordinator.store.claims import Statement

log = get("coordinator.vpn")


S = InstanceState
#: Redeploy without force only from these (and not while the instance waits to be released).
REDEPLOYABLE = frozenset({S.CREATED, S.STARTING, S.RUNNING, S.UNHEALTHY})


class NotRedeployable(BadRequest):
    """A redeploy refused: for the instance's state (``why`` None; the dialect names the state its own
    way), or for ``why``."""

    def __init__(self, inst: Instance, why: str | None = None) -> None:
        state = "waiting to be released" if inst.pending_release and inst.live else inst.state.value
        super().__init__(f"instance {inst.id} cannot be redeployed: {why or state}")
        self.instance = inst
        self.why = why


@dataclass(frozen=True, slots=True)
class Redeployed:
    original: Instance
    new: Instance
    country: str


class VpnService:
    def __init__(self, core: Core, deploys: DeployService, instances: InstanceService) -> None:
        self.core = core
        self.deploys = deploys
        self.instances = instances
        self._sweeping = asyncio.Lock()
        core.running_hooks.append(self._running)

    async def organization_names(self, ids: set[int]) -> dict[int, str]:
        """What the vpn dialect shows as each node's owner."""
        async with self.core.store.read() as conn:
            return await users_store.organization_names(conn, ids)

    async def _running(self, inst: Instance) -> None:
        """A replacement runs: its original goes now rather than at the next sweep."""
        if inst.replaces_id is not None:
            await self.sweep()

    # ------------------------------------------------------------ reads

    async def page(self, caller: Principal, *, page: int, page_size: int) -> tuple[list[Instance], int]:
        async with self.core.store.read() as conn:
            ids, total = await vpn_store.page_numbered(
                conn,
                None if caller.admin else caller.organization_id,
                offset=(page - 1) * page_size,
                limit=page_size,
            )
            found = await instances_store.instances_by_ids(conn, ids)
        return [self.core.fleet.overlay(i) for i in found], total

    async def get(self, caller: Principal, number: int) -> Instance:
        async with self.core.store.read() as conn:
            instance_id = await vpn_store.instance_id_by_number(conn, number)
        if instance_id is None:
            raise NotFound(f"node {number} does not exist", field="number", reason="vpn.node_not_found")
        inst = await self.instances.get_unchecked(instance_id)
        if not policy.can_see(caller, inst.organization_id):
            raise NotFound(f"node {number} does not exist", field="number", reason="vpn.node_not_found")
        return inst

    # ------------------------------------------------------------ changes

    async def rename(self, caller: Principal, number: int, name: str) -> Instance:
        inst = await self.get(caller, number)
        policy.check_owner(caller, inst.owner_id, inst.organization_id, f"node {number}")
        async with self.core.store.write() as conn:
            await vpn_store.rename(conn, inst.id, name, self.core.clock())
        return await self.get(caller, number)

    async def valid_countries(self) -> list[str]:
        async with self.core.store.read() as conn:
            return await vpn_store.region_countries(conn)

    async def redeploy(
        self, caller: Principal, number: int, force: bool, country_code: str | None
    ) -> Redeployed:
        inst = await self.get(caller, number)
        policy.check_owner(caller, inst.owner_id, inst.organization_id, f"node {number}")
        if inst.server is not None:
            raise NotRedeployable(inst, "it is a server of the servers API (terminate it there)")
        country = (country_code or await self._country_of(inst)).upper()
        valid = await self.valid_countries()
        if pycountry.countries.get(alpha_2=country) is None or country not in valid:
            raise BadRequest(
                f"Invalid country code: {country}. Valid country codes include: {', '.join(valid) or 'none'}",
                field="country_code",
            )
        waiting = inst.pending_release and inst.live
        if not force and (waiting or inst.state not in REDEPLOYABLE):
            raise NotRedeployable(inst)
        if not force and inst.redeploy_max_count <= 0:
            raise NotRedeployable(inst, "max redeploy count reached")
        now = self.core.clock()
        # Marked first, in one guarded statement: of two concurrent redeploys one goes on, and a replacement
        # that runs at once finds its original waiting for it.
        async with self.core.store.write() as conn:
            if not await vpn_store.claim_redeploy(conn, inst.id, now):
                raise NotRedeployable(replace(inst, pending_release=True))
        tags = sorted(inst.tags)

        def finish(new: Instance, node: NodeInfo) -> tuple[Instance, list[Statement]]:
            return new, servers_store.tag_statements(new.organization_id, new.id, tags, self.core.clock())

        order = DeployOrder(
            image=inst.image,
            memory_mib=inst.memory_mib,
            cpu_percent=inst.cpu_percent,
            disk_mib=inst.disk_mib,
            name=inst.name,
            region=country,
            owner_id=inst.owner_id,
            variables=dict(inst.env),
            size=inst.size,
            bandwidth_mbps=inst.bandwidth_mbps,
            expires_at=inst.expires_at,
            replaces_id=inst.id,
            redeploy_max_count=0,
            finish=finish,
        )
        try:
            deployed = await self.deploys.deploy(caller, order)
        except BaseException:
            async with self.core.store.write() as conn:
                await vpn_store.set_pending_release(conn, [inst.id], False, self.core.clock())
            raise
        if force:
            await self.instances.release([inst], wait=False)
        new = await self.instances.get_unchecked(deployed.instance.id)
        placed = (await where(self.core, [new]))[new.id].country or country
        return Redeployed(replace(inst, pending_release=True, updated_at=now), new, placed)

    async def _country_of(self, inst: Instance) -> str:
        return (await where(self.core, [inst]))[inst.id].country

    # ------------------------------------------------------------ releases nobody asks for

    async def sweep(self) -> list[str]:
        """Release what expired and what waited for a replacement that now runs; originals whose
        replacement ended without running go back to normal. Returns the released ids. One at a time (the
        running hook and the timer may both ask)."""
        async with self._sweeping:
            now = self.core.clock()
            # Looked for with a reader; the writer only when there is something to change.
            async with self.core.store.read() as conn:
                back = await vpn_store.abandoned(conn, now)
                due = await vpn_store.due_for_release(conn, now)
                found = await instances_store.instances_by_ids(conn, due)
            if not back and not found:
                return []
            async with self.core.store.write() as conn:
                await vpn_store.set_pending_release(conn, back, False, now)
                await vpn_store.set_pending_release(conn, due, True, now)
            if not found:
                return []
            await self.instances.release(found, wait=False)
        log.info("released expired or replaced instances", count=len(found))
        return due

    async def run_sweeps(self, leading: Callable[[], bool] = lambda: True) -> None:
        """Forever, every ``instances.expiry_check_s``, while this coordinator ``leading`` (one sweeps for
        all on a database); a failed sweep is logged and retried."""
        while True:
            await asyncio.sleep(self.core.config.instances.expiry_check_s)
            if not leading():
                continue
            try:
                await self.sweep()
            except Exception:
                log.exception("release sweep failed; retrying at the next one")
