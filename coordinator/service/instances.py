"""Instance use cases shared by every dialect: show, list and delete (release). Deploying is in deploy.py."""

from __future__ import annotations

import asyncio

from coordinator.commands import command
from coordinator.model import LIVE_STATES, Instance, InstanceState
from coordinator.service import policy
from coordinator.service.core import Core
from coordinator.service.errors import NotFound
from coordinator.store import instances as instances_store
from coordinator.store.users import Principal
from protos import moorage_pb2 as pb


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
