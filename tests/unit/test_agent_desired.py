"""The agent's desired set is exactly what the coordinator's Welcome and commands say: a failed deploy is
retried with the crash back-off only while it is still wanted, and a removal (or a Welcome without it)
ends every retry, so a released instance never comes back (over the in-memory runtime; the Docker path
is proven in tests/integration/test_faults.py)."""

from __future__ import annotations

import asyncio
import contextlib

from agent.executor import Executor
from agent.reconcile import Desired
from agent.restarts import RestartPolicy
from agent.runtime.base import (
    ContainerInfo,
    ContainerSpec,
    ContainerStatus,
    PortBinding,
    RuntimeFailure,
)
from agent.runtime.memory import MemoryRuntime
from agent.state import Order, Report
from tests.unit.factories import ManualTime, container_spec, executor_over, settle

FAST = RestartPolicy(initial_delay_s=0.05, max_delay_s=0.4, reset_after_s=60, crash_loop_after=10)
BUSY = "Bind for 127.0.0.1:30000 failed: port is already allocated"


class BusyPortRuntime(MemoryRuntime):
    """Starting a container fails while ``busy`` is set, as Docker's does when its port is taken."""

    def __init__(self) -> None:
        super().__init__()
        self.busy = True
        self.starts = 0

    async def start(self, container_id: str) -> None:
        self.starts += 1
        if self.busy:
            raise RuntimeFailure(BUSY)
        await super().start(container_id)


def spec(iid: str = "i1") -> ContainerSpec:
    return container_spec(iid, ports=(PortBinding("127.0.0.1", 30000),))


def want(*iids: str) -> dict[str, Desired]:
    return {iid: Desired(spec(iid), running=True) for iid in iids}


def manager_over(runtime: MemoryRuntime, time: ManualTime | None = None) -> tuple[Executor, list[Report]]:
    """An executor over ``runtime`` whose retries wait on ``time`` (moved by hand)."""
    events: list[Report] = []
    return executor_over(runtime, events.append, time or ManualTime(), FAST), events


def kinds(events: list[Report]) -> list[str]:
    return [e.kind.name for e in events]


async def test_a_failed_deploy_is_retried_with_the_back_off_while_wanted() -> None:
    runtime, time = BusyPortRuntime(), ManualTime()
    manager, events = manager_over(runtime, time)
    await manager.reconcile({}, set())
    result = await manager.command(Order.DEPLOY, "i1", want("i1")["i1"])
    assert not result.ok and BUSY in result.error
    assert kinds(events) == ["ACCEPTED", "CREATED", "FAILED"] and not runtime.containers
    # Resyncs during the back-off do not retry: only the back-off does, further apart each time.
    for _ in range(5):
        await manager.resync()
    assert runtime.starts == 1
    await time.advance(0.049)
    assert runtime.starts == 1  # not before its back-off
    await time.advance(0.001 + 0.1 + 1e-6)  # two retries: after 0.05 s, then 0.1 s
    assert runtime.starts == 3 and not runtime.containers
    runtime.busy = False
    await time.advance(0.2 + 1e-6)  # the next one (0.2 s later) succeeds
    assert [c.status for c in runtime.containers.values()] == [ContainerStatus.RUNNING]
    assert kinds(events)[-1] == "STARTED"
    await manager.close()


async def test_a_removal_ends_the_retries_so_a_released_instance_never_comes_back() -> None:
    runtime, time = BusyPortRuntime(), ManualTime()
    manager, events = manager_over(runtime, time)
    await manager.reconcile({}, set())
    await manager.command(Order.DEPLOY, "i1", want("i1")["i1"])
    removed = await manager.command(Order.REMOVE, "i1", None)
    assert removed.ok and kinds(events)[-1] == "REMOVED"
    runtime.busy = False  # the port is free again: nothing may use it now
    await time.advance(60)
    for _ in range(3):
        await manager.resync()
    assert not runtime.containers and runtime.starts == 1 and manager.state.want("i1") is None
    await manager.close()


async def test_a_welcome_without_the_instance_drops_it_and_its_retry() -> None:
    runtime, time = BusyPortRuntime(), ManualTime()
    manager, _ = manager_over(runtime, time)
    await manager.reconcile(want("i1"), set())
    assert runtime.starts == 1 and not runtime.containers
    # The coordinator failed it while the session was down; the next Welcome no longer holds it.
    await manager.reconcile(want("other"), set())
    runtime.busy = False
    await time.advance(60)
    await manager.resync()
    assert [c.instance_id for c in runtime.containers.values()] == ["other"]
    await manager.close()


async def test_a_welcome_removal_of_a_failed_instance_reports_it_removed() -> None:
    runtime, time = BusyPortRuntime(), ManualTime()
    manager, events = manager_over(runtime, time)
    await manager.reconcile(want("i1"), set())
    await manager.reconcile({}, {"i1"})
    runtime.busy = False
    await time.advance(60)
    assert kinds(events)[-1] == "REMOVED" and not runtime.containers
    await manager.close()


async def test_no_resync_before_the_first_welcome_removes_anything() -> None:
    """An agent that starts while its coordinator is away does not know what is wanted yet: its
    containers are kept, however long that lasts."""
    runtime = MemoryRuntime()
    manager, _ = manager_over(runtime)
    manager.state.unknown_grace_s = 0.0
    kept = await runtime.create(spec())
    await runtime.start(kept)
    await manager.resync()
    assert kept in runtime.containers
    await manager.reconcile(want("i1"), set())
    await manager.resync()
    assert runtime.containers[kept].status is ContainerStatus.RUNNING


class SlowStartRuntime(BusyPortRuntime):
    """The engine takes its time to start a container (as it does, in a thread the agent cannot stop)."""

    def __init__(self) -> None:
        super().__init__()
        self.in_start = asyncio.Event()
        self.finish_start = asyncio.Event()

    async def start(self, container_id: str) -> None:
        if not self.busy:
            self.in_start.set()
            await asyncio.shield(self.finish_start.wait())
        await super().start(container_id)


async def retry_inside_start() -> tuple[Executor, SlowStartRuntime]:
    """A deploy failed (its port was busy); its retry is now inside the engine's slow start."""
    runtime, time = SlowStartRuntime(), ManualTime()
    manager, _ = manager_over(runtime, time)
    await manager.reconcile(want("i1"), set())
    runtime.busy = False
    await time.advance(0.05)
    assert runtime.in_start.is_set()
    return manager, runtime


async def test_a_welcome_that_drops_an_instance_mid_retry_leaves_no_container() -> None:
    manager, runtime = await retry_inside_start()
    dropping = asyncio.create_task(manager.reconcile({}, set()))  # the coordinator no longer wants it
    await settle()
    runtime.finish_start.set()
    await dropping
    await settle()
    assert not runtime.containers, "a container of an instance nobody wants was left running"
    await manager.close()


class SlowListRuntime(MemoryRuntime):
    """Listing waits until told (as an engine with many containers does: a list and an inspect each)."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = asyncio.Event()
        self.holding = asyncio.Event()
        self.fail_next = False

    async def list(self, node_id: str) -> list[ContainerInfo]:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeFailure("the container engine does not answer")
        if not self.hold.is_set():
            self.holding.set()
            await self.hold.wait()
        return await super().list(node_id)


async def test_a_removal_right_behind_a_welcome_is_not_undone_by_it() -> None:
    """The Welcome still held the instance; the coordinator released it at once after. The container must
    not come back when the Welcome's reconcile goes on."""
    runtime = SlowListRuntime()
    manager, events = manager_over(runtime)
    runtime.hold.set()
    await manager.reconcile(want("i1"), set())
    runtime.hold.clear()
    reconciling = asyncio.create_task(manager.reconcile(want("i1"), set()))  # a new session's Welcome
    await asyncio.wait_for(runtime.holding.wait(), 2)
    runtime.hold.set()  # the removal's own engine calls may list
    assert (await manager.command(Order.REMOVE, "i1", None)).ok
    await reconciling
    assert not runtime.containers and kinds(events)[-1] == "REMOVED"
    await manager.close()


async def test_a_welcome_the_engine_cannot_answer_is_still_in_force() -> None:
    """The engine is down when the Welcome comes: its set is in force anyway, and the resync after the
    engine is back creates what it holds."""
    runtime = SlowListRuntime()
    runtime.hold.set()
    manager, _ = manager_over(runtime)
    runtime.fail_next = True
    with contextlib.suppress(RuntimeFailure):
        await manager.reconcile(want("i1"), set())
    assert manager.state.want("i1") is not None and manager.state.welcomed
    await manager.resync()
    assert [c.status for c in runtime.containers.values()] == [ContainerStatus.RUNNING]
    await manager.close()


async def test_a_retry_at_work_is_not_doubled_by_a_resync_and_close_stops_it() -> None:
    manager, runtime = await retry_inside_start()
    await manager.resync()  # plans a start for the created container: the retry owns it
    assert runtime.starts == 1  # the retry's start has not returned yet
    runtime.finish_start.set()
    await settle()
    assert runtime.starts == 2 and [c.status for c in runtime.containers.values()] == [
        ContainerStatus.RUNNING
    ]
    await manager.close()
    assert not manager._retries


async def test_a_removal_behind_a_deploy_at_work_waits_for_it_and_removes_once() -> None:
    runtime = SlowStartRuntime()
    runtime.busy = False
    manager, events = manager_over(runtime)
    await manager.reconcile({}, set())
    deploying = asyncio.create_task(manager.command(Order.DEPLOY, "i1", want("i1")["i1"]))
    await asyncio.wait_for(runtime.in_start.wait(), 2)
    removing = asyncio.create_task(manager.command(Order.REMOVE, "i1", None))
    await settle()
    runtime.finish_start.set()
    deployed, removed = await asyncio.gather(deploying, removing)
    assert deployed.ok and deployed.container_id and removed.ok
    assert kinds(events).count("REMOVED") == 1 and not runtime.containers
    await manager.close()


class CountingRuntime(MemoryRuntime):
    """Counts the lists of every container (on Docker an inspect each) and the lookups of one."""

    def __init__(self) -> None:
        super().__init__()
        self.lists = 0
        self.finds = 0

    async def list(self, node_id: str) -> list[ContainerInfo]:
        self.lists += 1
        return await super().list(node_id)

    async def find(self, node_id: str, instance_id: str) -> ContainerInfo | None:
        self.finds += 1
        return next((c for c in await super().list(node_id) if c.instance_id == instance_id), None)


async def test_a_welcome_of_many_instances_does_not_list_every_container_for_each() -> None:
    """Forty instances reconciled at once (a reconnect's Welcome, a resync after the engine came back): each
    looks up its own container, not all of them (on Docker 40 x 40 inspects, and their documents in memory
    at once: the agent's RSS rose 12 MiB at a coordinator restart with 50 instances)."""
    runtime = CountingRuntime()
    manager, _ = manager_over(runtime)
    iids = [f"i{n}" for n in range(40)]
    await manager.reconcile({iid: Desired(container_spec(iid), running=True) for iid in iids}, set())
    await settle()
    assert len(runtime.containers) == 40
    assert runtime.lists <= 2 and runtime.finds >= 40
    await manager.close()
