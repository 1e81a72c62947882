"""Instance use cases shared by every dialect: show, list, power, suspend and delete (release). Deploying is
in deploy.py.

Power and suspension are durable desired states, not one-off signals: the database row says whether the
instance should run (and whether an admin suspended it), every command carries that whole spec, and the
Welcome of each agent session repeats it, so a restart of either daemon converges to it again."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from coordinator.domain import lifecycle
from coordinator.domain.agents import CommandKind
from coordinator.domain.lifecycle import Event
from coordinator.domain.records import LIVE_STATES, Instance, InstanceState, Principal
from coordinator.service import policy
from coordinator.service.core import Core
from coordinator.service.errors import Conflict, Forbidden, NotFound
from coordinator.store import instances as instances_store

S = InstanceState


@dataclass(frozen=True, slots=True)
class PowerAction:
    event: Event
    #: States in which the action is already done: answered as is, nothing sent.
    done_in: frozenset[InstanceState]
    kind: CommandKind


POWER: dict[str, PowerAction] = {
    "start": PowerAction(Event.START, frozenset({S.STARTING, S.RUNNING}), CommandKind.START),
    "stop": PowerAction(Event.STOP, frozenset({S.STOPPED}), CommandKind.STOP),
    "restart": PowerAction(Event.RESTART, frozenset(), CommandKind.RESTART),
    "kill": PowerAction(Event.KILL, frozenset({S.STOPPED, S.CREATED}), CommandKind.KILL),
}


def _why_not(inst: Instance, action: str) -> str:
    """Why ``action`` cannot apply to the instance in its state (the 409's message)."""
    what = f"instance {inst.id}"
    if inst.suspended or inst.state is S.SUSPENDED:
        return f"instance_id: {what} is suspended; an admin must unsuspend it before it can {action}"
    return {
        S.PENDING: f"instance_id: {what} is still being created; retry once it is",
        S.PROVISIONING: f"instance_id: {what} is still being created; retry once it is",
        S.RELEASING: f"instance_id: {what} is being deleted",
        S.RELEASED: f"instance_id: {what} was deleted",
        S.ERROR: f"instance_id: {what} failed to provision ({inst.error}); delete it and deploy again",
    }.get(inst.state, f"instance_id: {what} cannot {action} while {inst.state.value}")


class InstanceService:
    def __init__(self, core: Core) -> None:
        self.core = core

    # ------------------------------------------------------------ reads

    async def get(
        self, caller: Principal, instance_id: str, *, field: str = "id", own_only: bool = False
    ) -> Instance:
        """``own_only``: a non-admin sees only the instances they own (the panel dialect's rule); others
        are reported missing, as a foreign organization's are."""
        inst = await self.get_unchecked(instance_id, field=field)
        policy.check_visible(
            caller,
            inst.organization_id,
            f"instance {instance_id}",
            field=field,
            owner_id=inst.owner_id if own_only else None,
        )
        return inst

    async def get_unchecked(self, instance_id: str, *, field: str = "id") -> Instance:
        """Without the caller's visibility check: for use cases that already made it."""
        async with self.core.store.read() as conn:
            inst = await instances_store.get_instance(conn, instance_id)
        if inst is None:
            raise NotFound(f"instance {instance_id} does not exist", field=field)
        return self.core.fleet.overlay(inst)

    async def list_visible(
        self, caller: Principal, *, owner_id: str | None = None, own_only: bool = False
    ) -> list[Instance]:
        """The caller's organization's instances (all for an admin), or one owner's. ``own_only``: a
        non-admin sees only their own, and asking for another user's is forbidden."""
        if own_only and not caller.admin:
            if owner_id is not None and owner_id != caller.user_id:
                raise Forbidden("user_id: only an admin may list another user's instances", field="user_id")
            owner_id = caller.user_id
        async with self.core.store.read() as conn:
            found = await instances_store.list_instances(
                conn, organization_id=None if caller.admin else caller.organization_id, owner_id=owner_id
            )
        return [self.core.fleet.overlay(i) for i in found]

    # ------------------------------------------------------------ power and suspension

    async def power(
        self, caller: Principal, instance_id: str, action: str, *, own_only: bool = False
    ) -> Instance:
        """start, stop, restart or kill, for the owner (or an admin). Refused (409) while suspended, not yet
        created, being deleted or failed; answered as is when already done."""
        act = POWER[action]
        inst = await self.get(caller, instance_id, own_only=own_only)
        policy.check_owner(
            caller, inst.owner_id, inst.organization_id, f"instance {instance_id}", field="instance_id"
        )
        if inst.suspended:
            raise Conflict(_why_not(inst, action), field="instance_id")
        if inst.state in act.done_in:
            return inst
        if lifecycle.next_state(inst.state, act.event) is None:
            raise Conflict(_why_not(inst, action), field="instance_id")
        return await self._move(inst, act.event, act.kind, action)

    async def suspend(self, caller: Principal, instance_id: str) -> Instance:
        """An admin stops the instance and every start until unsuspend (billing, abuse)."""
        policy.require_admin(caller, "suspend an instance")
        inst = await self.get(caller, instance_id)
        if inst.suspended:
            return inst
        if lifecycle.next_state(inst.state, Event.SUSPEND) is None:
            raise Conflict(_why_not(inst, "be suspended"), field="instance_id")
        return await self._move(inst, Event.SUSPEND, CommandKind.SUSPEND, "suspend", suspended=True)

    async def unsuspend(self, caller: Principal, instance_id: str) -> Instance:
        """Lift a suspension: the instance starts again."""
        policy.require_admin(caller, "unsuspend an instance")
        inst = await self.get(caller, instance_id)
        if not inst.suspended:
            return inst
        return await self._move(inst, Event.UNSUSPEND, CommandKind.START, "unsuspend", suspended=False)

    async def _move(
        self,
        inst: Instance,
        event: Event,
        kind: CommandKind,
        action: str,
        **values: object,
    ) -> Instance:
        """The new desired state, durable first; then the agent is told (and waited for, a bounded time).
        An agent that is away converges from its next Welcome."""
        async with self.core.store.write() as conn:
            moved = await instances_store.transition(
                conn, inst.id, event, now=self.core.clock(), error=None, **values
            )
            current = await instances_store.get_instance(conn, inst.id)
        if not moved or current is None:
            raise Conflict(
                f"instance_id: instance {inst.id} changed meanwhile; retry the {action}", field="instance_id"
            )
        # Whatever ran before, the next heartbeat that shows it running must confirm it again.
        self.core.fleet.unconfirm(inst.id)
        if current.node_id is not None:
            cmd = self.core.command(kind, current)
            await self.core.agents.send(current.node_id, cmd, self.core.config.fleet.command_wait_s)
        return await self.get_unchecked(inst.id)

    # ------------------------------------------------------------ delete

    async def delete(self, caller: Principal, instance_id: str, *, own_only: bool = False) -> Instance:
        """Release: the container is removed, the allocations freed, the row kept for its history. Waits a
        bounded time for the agent so a panel usually reads the final state in the answer."""
        inst = await self.get(caller, instance_id, own_only=own_only)
        policy.check_owner(
            caller, inst.owner_id, inst.organization_id, f"instance {instance_id}", field="instance_id"
        )
        await self.release([inst])
        return await self.get(caller, instance_id)

    async def release(self, found: list[Instance], *, wait: bool = True) -> None:
        """Mark each releasing (a failed one released at once: nothing of it runs), ask the agents to remove
        the containers (a failed one's too: the agent then drops it for good), and (``wait``) wait for
        their reports a bounded time."""
        now = self.core.clock()
        found = sorted(
            (inst for inst in found if inst.state is not InstanceState.RELEASED), key=lambda i: i.id
        )
        moved = {}
        for inst in found:
            # One transaction each (the lock order in store/claims.py): a failed one released at once takes
            # its region, node and allocations, and the next instance's row must not be waited for while
            # holding those.
            async with self.core.store.write() as conn:
                moved[inst.id] = await instances_store.transition(conn, inst.id, Event.RELEASE, now=now)
        waits = []
        for inst in found:
            self.core.fleet.unconfirm(inst.id)
            done = moved[inst.id]
            if inst.node_id is None or done is None:
                continue
            # A failed one is released at once: its agent is told, nothing is waited for.
            removal = self.core.tell_remove(inst, wait=wait, ended=done.new is InstanceState.RELEASED)
            if removal is not None:
                waits.append(removal)
        await asyncio.gather(*waits)

    async def release_node(self, node_id: str) -> list[str]:
        """Release every live instance of a node that is being deleted. Those its agent did not confirm
        removing (it is offline) are released anyway: once the node is gone nothing can reach them."""
        async with self.core.store.read() as conn:
            found = await instances_store.list_instances(conn, node_id=node_id, states=LIVE_STATES)
        await self.release(found)
        now = self.core.clock()
        for inst in found:
            # One transaction each: a transition takes its instance, region, node and allocations, and the
            # next instance's lock must not be waited for while holding those (a late removal report holds it
            # and wants the region).
            async with self.core.store.write() as conn:
                await instances_store.transition(
                    conn,
                    inst.id,
                    Event.ABANDONED,
                    now=now,
                    error="released with its node; the agent did not confirm removal",
                )
            self.core.fleet.forget_instance(inst.id)
        return [inst.id for inst in found]
