"""Crash restarts: the back-off policy as a pure function (examples and properties), and the instance
executor applying it over the in-memory runtime (the Docker path is proven in test_fleet_truth.py)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from agent.executor import Executor
from agent.reconcile import Desired
from agent.restarts import RestartPolicy, on_crash
from agent.runtime.base import ContainerSpec, ContainerStatus
from agent.runtime.memory import MemoryRuntime
from agent.state import Order, Report, ReportKind
from tests.unit.factories import ManualTime, container_spec, executor_over

POLICY = RestartPolicy(initial_delay_s=1, max_delay_s=60, reset_after_s=30, crash_loop_after=4)


def test_the_delay_doubles_per_crash_in_a_row_up_to_the_cap() -> None:
    in_a_row, delays, loops = 0, [], []
    for _ in range(9):
        crash = on_crash(POLICY, in_a_row, ran_for_s=2)
        in_a_row = crash.in_a_row
        delays.append(crash.delay_s)
        loops.append(crash.loop)
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert loops == [False, False, False, True, True, True, True, True, True]
    # A container that ran past reset_after_s starts the count afresh.
    assert on_crash(POLICY, 8, ran_for_s=30) == on_crash(POLICY, 0, ran_for_s=0)


@given(st.integers(0, 100), st.floats(0, 1e6, allow_nan=False))
def test_the_delay_never_exceeds_the_cap_and_never_shrinks_within_a_row(previous: int, ran: float) -> None:
    crash = on_crash(POLICY, previous, ran)
    assert POLICY.initial_delay_s <= crash.delay_s <= POLICY.max_delay_s
    if ran < POLICY.reset_after_s:
        assert crash.in_a_row == previous + 1
        assert crash.delay_s >= on_crash(POLICY, max(previous - 1, 0), ran).delay_s
    else:
        assert crash.in_a_row == 1


def spec(iid: str) -> ContainerSpec:
    return container_spec(iid, cpu_percent=50)


TIME = ManualTime()  # each test moves it on; nothing here waits for real


async def running_manager(policy: RestartPolicy) -> tuple[Executor, MemoryRuntime, list[Report]]:
    runtime = MemoryRuntime()
    events: list[Report] = []
    manager = executor_over(runtime, events.append, TIME, policy)
    await manager.reconcile({"i1": Desired(spec("i1"), running=True)}, set())
    return manager, runtime, events


async def stop(manager: Executor) -> None:
    """The owner stops it (or an admin suspends it)."""
    assert (await manager.command(Order.STOP, "i1", Desired(spec("i1"), running=False))).ok


def crash(manager: Executor, runtime: MemoryRuntime, code: int = 1) -> None:
    cid = next(iter(runtime.containers))
    runtime.containers[cid] = replace(runtime.containers[cid], status=ContainerStatus.EXITED, exit_code=code)
    manager.on_engine_event("exited", "i1", code, cid)


async def test_a_crashed_container_is_reported_then_restarted_after_the_back_off() -> None:
    fast = RestartPolicy(initial_delay_s=0.05, max_delay_s=0.2, reset_after_s=60, crash_loop_after=3)
    manager, runtime, events = await running_manager(fast)
    cid = next(iter(runtime.containers))
    for n in (1, 2, 3):
        crash(manager, runtime, code=3)
        reported = events[-1]
        assert reported.kind is ReportKind.EXITED and "exited with code 3" in reported.message
        assert ("crash loop" in reported.message) == (n == 3)
        assert runtime.containers[cid].status is ContainerStatus.EXITED  # not at once: after the back-off
        await TIME.advance(fast.initial_delay_s * 2 ** (n - 1) * 0.9)
        assert runtime.containers[cid].status is ContainerStatus.EXITED  # still waiting out its back-off
        await TIME.advance(fast.initial_delay_s * 2 ** (n - 1) * 0.1 + 1e-6)
        assert runtime.containers[cid].status is ContainerStatus.RUNNING
        assert events[-1].kind is ReportKind.STARTED and manager.restarts("i1") == n
    await manager.close()


async def test_no_restart_for_a_stop_we_asked_for_a_stopped_instance_or_a_disabled_policy() -> None:
    manager, runtime, events = await running_manager(RestartPolicy(initial_delay_s=0.01))
    cid = next(iter(runtime.containers))
    # Stopped on purpose: its exit is no crash.
    await stop(manager)
    manager.on_engine_event("exited", "i1", 0, cid)
    assert events[-1].kind is ReportKind.STOPPED
    # Should not run (stopped by its owner, or suspended): reported, never restarted.
    manager.on_engine_event("exited", "i1", 0, cid)
    await TIME.advance(60)
    assert runtime.containers[cid].status is ContainerStatus.EXITED and manager.restarts("i1") == 0
    assert [e.kind for e in events[-1:]] == [ReportKind.EXITED]
    off, runtime2, events2 = await running_manager(RestartPolicy(enabled=False))
    crash(off, runtime2)
    await TIME.advance(60)
    assert next(iter(runtime2.containers.values())).status is ContainerStatus.EXITED
    assert events2[-1].message == "the container exited with code 1"


async def test_an_oom_kill_is_one_crash_with_its_reason_and_a_stop_meanwhile_wins() -> None:
    manager, runtime, events = await running_manager(RestartPolicy(initial_delay_s=0.05))
    cid = next(iter(runtime.containers))
    manager.on_engine_event("oom", "i1", 0, cid)
    crash(manager, runtime, code=137)
    assert [e.kind for e in events[-1:]] == [ReportKind.OOM_KILLED]
    assert events[-1].message.startswith("the container was OOM-killed; restarting in")
    await stop(manager)  # a stop arrived during the back-off
    await TIME.advance(60)
    assert runtime.containers[cid].status is ContainerStatus.EXITED
    await manager.close()


async def test_resync_between_welcomes_recreates_starts_and_removes_what_differs() -> None:
    manager, runtime, _ = await running_manager(RestartPolicy(initial_delay_s=60))
    manager.state.unknown_grace_s = 0.0
    cid = next(iter(runtime.containers))
    # Stopped behind our back (the engine restarted): started again, no back-off involved.
    runtime.containers[cid] = replace(runtime.containers[cid], status=ContainerStatus.EXITED)
    stray = await runtime.create(replace(spec("stray"), name="stray"))  # labelled, wanted by nobody
    await manager.resync()
    assert runtime.containers[cid].status is ContainerStatus.RUNNING
    assert stray not in runtime.containers
    # Gone entirely: re-created.
    runtime.containers.clear()
    await manager.resync()
    assert [c.instance_id for c in runtime.containers.values()] == ["i1"]
    # A crash waiting out its back-off is left to it.
    crash(manager, runtime)
    await manager.resync()
    assert next(iter(runtime.containers.values())).status is ContainerStatus.EXITED
    await manager.close()
