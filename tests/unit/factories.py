"""Domain records (the coordinator's and the agent's) with sensible defaults, for unit tests."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from agent.executor import Executor
from agent.restarts import RestartPolicy
from agent.runtime.base import ContainerInfo, ContainerSpec, ContainerStatus, PullPolicy, Runtime
from agent.state import Report
from bench.seed import node_record, organization_with_user
from coordinator.domain.records import Instance, Node
from coordinator.store import nodes as nodes_store
from coordinator.store.engine import Store
from coordinator.store.tables import events


def make_node(node_id: str, **over: Any) -> Node:
    return node_record(node_id, **over)


def make_instance(instance_id: str, **over: Any) -> Instance:
    values: dict[str, Any] = dict(
        id=instance_id,
        name="i",
        organization_id=1,
        owner_id="u",
        image="img",
        image_ref="img",
        memory_mib=64,
        cpu_percent=50,
        disk_mib=0,
        env={},
    )
    values.update(over)
    return Instance(**values)


async def seeded_store(where: Path | str, ports: range = range(30000, 30010)) -> Store:
    """A migrated store holding user "u" (organization 1) and node "n1" with allocations "a<port>" on
    0.0.0.0. ``where``: a SQLite file, or a database URL (the ``store_url`` fixture's)."""
    store = Store.open(where if isinstance(where, str) else f"sqlite:///{where}")
    await store.migrate()
    async with store.write() as conn:
        await seed_user(conn)
        await nodes_store.insert_node(conn, make_node("n1"))
        await nodes_store.insert_allocations(conn, "n1", [(f"a{p}", "0.0.0.0", p) for p in ports])
    return store


async def seed_user(conn: AsyncConnection, *, admin: bool = False) -> int:
    """User "u" in a new organization (whose id is returned)."""
    return await organization_with_user(conn, "u", admin=admin)


def container_spec(iid: str, **over: Any) -> ContainerSpec:
    """What the agent is asked to run for an instance (the test image, 64 MiB)."""
    values: dict[str, Any] = dict(
        instance_id=iid,
        node_id="n",
        name=iid,
        image="moorage-test/busybox:latest",
        env={},
        memory_mib=64,
        cpu_percent=0,
    )
    values.update(over)
    return ContainerSpec(**values)


def container_info(iid: str, status: ContainerStatus = ContainerStatus.RUNNING, **over: Any) -> ContainerInfo:
    """A labelled container as the engine reports it."""
    values: dict[str, Any] = dict(
        container_id=f"c-{iid}",
        instance_id=iid,
        node_id="n",
        name=iid,
        image="img",
        status=status,
        exit_code=0,
        oom_killed=False,
        pid=1 if status is ContainerStatus.RUNNING else 0,
        started_at=0.0,
        restart_count=0,
        health="",
        labels={"moorage.instance": iid},
    )
    values.update(over)
    return ContainerInfo(**values)


async def settle(rounds: int = 30) -> None:
    """Let every task that can run, run (each round is one turn of the event loop)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class ManualTime:
    """A clock and a sleep the test moves by hand: a timer fires when the test advances past it, never on
    its own, so back-offs are tested without waiting for them."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + delay, next(self._order), waiter))
        await waiter

    async def advance(self, seconds: float) -> None:
        """Move time on, waking each sleeper whose time came, in order, and letting it run."""
        await settle()
        target = self.now + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            due, _, waiter = heapq.heappop(self._sleepers)
            self.now = max(self.now, due)
            if not waiter.done():
                waiter.set_result(None)
            await settle()
        self.now = target
        await settle()


def executor_over(
    runtime: Runtime, report: Callable[[Report], None], time: ManualTime, policy: RestartPolicy
) -> Executor:
    """An agent executor over ``runtime`` whose clock and retries run on ``time`` (moved by hand)."""
    return Executor(
        runtime, "n", PullPolicy.MISSING, report, restart_policy=policy, clock=time.clock, sleep=time.sleep
    )


async def event_with_id(store: Store, event_id: int, what: str, organization_id: int = 1) -> None:
    """An event with an id of our own choosing: how a test makes the gaps PostgreSQL's sequence leaves."""
    async with store.write() as conn:
        await conn.execute(
            insert(events).values(
                id=event_id,
                at=time.time(),
                kind="instance.state",
                organization_id=organization_id,
                data={"what": what},
            )
        )
