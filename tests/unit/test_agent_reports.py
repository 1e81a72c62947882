"""How agent reports move instances through the lifecycle (real SQLite store, no network)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench.seed import core_over
from coordinator.domain.agents import (
    Command,
    CommandKind,
    ContainerState,
    EventKind,
    Heartbeat,
    Hello,
    InstanceEvent,
    InstanceStatus,
    ReportRequest,
)
from coordinator.domain.records import InstanceState, NodeStatus
from coordinator.gateway import translate
from coordinator.service.agent_reports import MISSING, AgentReports
from coordinator.store import instances as instances_store
from coordinator.store import nodes as nodes_store
from coordinator.store.claims import claim_now
from tests.unit.factories import make_instance, make_node, seeded_store

S = InstanceState


@pytest.fixture
async def reports(store_url: str, tmp_path: Path) -> AsyncIterator[AgentReports]:
    store = await seeded_store(store_url, range(30000, 30002))
    core = core_over(store, tmp_path)
    try:
        yield AgentReports(core)
    finally:
        await core.fleet.settle()  # a Hello's node status change is still being written
        await store.close()


async def put(reports: AgentReports, state: InstanceState, iid: str = "i1", port: int = 30000) -> None:
    inst = make_instance(iid, node_id="n1", state=state)
    await claim_now(reports.core.store, inst, ports=(port,), port_count=1, primary=None)


async def state_of(reports: AgentReports, iid: str = "i1") -> tuple[InstanceState, str | None, int]:
    async with reports.core.store.read() as conn:
        inst = await instances_store.get_instance(conn, iid)
    assert inst is not None
    return inst.state, inst.error, len(inst.allocations)


def running(iid: str = "i1") -> Heartbeat:
    return Heartbeat(
        instances=[InstanceStatus(instance_id=iid, container_id="c", state=ContainerState.RUNNING)]
    )


async def test_the_lifecycle_of_a_deploy(reports: AgentReports) -> None:
    await put(reports, S.PENDING)
    for kind, expected in [
        (EventKind.ACCEPTED, S.PROVISIONING),
        (EventKind.CREATED, S.CREATED),
        (EventKind.STARTED, S.STARTING),
    ]:
        await reports.event("n1", InstanceEvent(instance_id="i1", kind=kind, container_id="c"))
        assert (await state_of(reports))[0] is expected
    await reports.heartbeat("n1", running())
    assert (await state_of(reports))[0] is S.RUNNING


async def test_a_readopted_running_container_does_not_flap(reports: AgentReports) -> None:
    await put(reports, S.RUNNING)
    await reports.event("n1", InstanceEvent(instance_id="i1", kind=EventKind.STARTED, container_id="c"))
    assert (await state_of(reports))[0] is S.RUNNING


async def test_late_reports_never_move_an_instance_backwards(reports: AgentReports) -> None:
    await put(reports, S.RUNNING)
    for kind in (EventKind.ACCEPTED, EventKind.CREATED, EventKind.FAILED):
        await reports.event("n1", InstanceEvent(instance_id="i1", kind=kind, message="late"))
        assert (await state_of(reports))[0] is S.RUNNING


async def test_a_failed_provisioning_frees_the_ports(reports: AgentReports) -> None:
    await put(reports, S.PROVISIONING)
    await reports.event("n1", InstanceEvent(instance_id="i1", kind=EventKind.FAILED, message="no such image"))
    assert await state_of(reports) == (S.ERROR, "no such image", 0)


async def test_a_container_that_died_unseen_is_unhealthy_on_the_next_heartbeat(reports: AgentReports) -> None:
    await put(reports, S.STARTING)
    await reports.heartbeat("n1", running())
    assert (await state_of(reports))[0] is S.RUNNING
    dead = InstanceStatus(instance_id="i1", container_id="c", state=ContainerState.EXITED, exit_code=137)
    await reports.heartbeat("n1", Heartbeat(instances=[dead]))
    assert await state_of(reports) == (S.UNHEALTHY, "the container is exited (exit code 137)", 1)
    await reports.heartbeat("n1", running())
    assert (await state_of(reports))[:2] == (S.RUNNING, None)


async def test_removal_releases_and_frees(reports: AgentReports) -> None:
    await put(reports, S.RELEASING)
    await reports.event("n1", InstanceEvent(instance_id="i1", kind=EventKind.REMOVED))
    assert await state_of(reports) == (S.RELEASED, None, 0)


async def test_hello_answers_with_the_desired_set_and_releases_what_is_gone(reports: AgentReports) -> None:
    await put(reports, S.RUNNING, "keep")
    async with reports.core.store.write() as conn:
        await instances_store.insert_instance(conn, make_instance("gone", node_id="n1", state=S.RELEASING))
    welcome = await reports.hello("n1", Hello())
    assert [w.instance.id for w in welcome.desired] == ["keep"] and list(welcome.remove) == ["gone"]
    assert translate.instance_spec(welcome.desired[0]).env["SERVER_PORT"] == "30000"
    assert (await state_of(reports, "gone"))[0] is S.RELEASED


async def test_a_container_removed_behind_our_back_keeps_its_ports(reports: AgentReports) -> None:
    await put(reports, S.RUNNING)
    await reports.event("n1", InstanceEvent(instance_id="i1", kind=EventKind.REMOVED))
    assert await state_of(reports) == (S.UNHEALTHY, "the container was removed outside Moorage", 1)


async def test_a_confirmed_container_missing_from_a_heartbeat_is_unhealthy(reports: AgentReports) -> None:
    await put(reports, S.STARTING)
    await reports.heartbeat("n1", running())
    assert not reports.needs_work("n1", running())  # confirmed: the same report again costs nothing
    assert reports.needs_work("n1", Heartbeat())
    await reports.heartbeat("n1", Heartbeat())  # the agent reports every labelled container; i1 is not one
    assert await state_of(reports) == (S.UNHEALTHY, MISSING, 1)
    await reports.heartbeat("n1", running())  # re-created by the agent and running again
    assert (await state_of(reports))[:2] == (S.RUNNING, None)


async def test_a_hello_without_a_running_instance_makes_it_unhealthy(reports: AgentReports) -> None:
    """Removed while the agent (or the coordinator) was down: no event ever said so, the Hello does."""
    await put(reports, S.RUNNING)
    welcome = await reports.hello("n1", Hello())
    assert [w.instance.id for w in welcome.desired] == ["i1"]  # so the agent re-creates it
    assert await state_of(reports) == (S.UNHEALTHY, MISSING, 1)


async def test_unwanted_containers_and_restarts_are_kept_from_heartbeats(reports: AgentReports) -> None:
    fleet = reports.core.fleet
    stray = InstanceStatus(
        instance_id="old", container_id="c9", state=ContainerState.RUNNING, remove_at_ms=1_700_000_000_000
    )
    mine = InstanceStatus(instance_id="i1", container_id="c", state=ContainerState.RUNNING, restarts=2)
    reports.note_heartbeat("n1", Heartbeat(instances=[mine, stray]))
    assert [s.instance_id for s in fleet.unwanted("n1")] == ["old"]
    assert fleet.overlay(make_instance("i1", node_id="n1", state=S.RUNNING)).restarts == 2
    reports.note_heartbeat("n1", Heartbeat(instances=[mine]))  # removed by the agent
    assert fleet.unwanted("n1") == ()


def partial(*statuses: InstanceStatus, gone: tuple[str, ...] = ()) -> Heartbeat:
    return Heartbeat(instances=statuses, partial=True, gone=frozenset(gone))


async def test_a_partial_heartbeat_changes_only_what_it_lists(reports: AgentReports) -> None:
    await put(reports, S.STARTING)
    await put(reports, S.STARTING, "i2", 30001)
    both = [
        InstanceStatus(instance_id=i, container_id="c", state=ContainerState.RUNNING, restarts=1)
        for i in ("i1", "i2")
    ]
    reports.note_heartbeat("n1", Heartbeat(instances=both))
    await reports.heartbeat("n1", Heartbeat(instances=both))
    assert (await state_of(reports, "i2"))[0] is S.RUNNING
    alive = partial()
    assert not reports.needs_work("n1", alive)  # nothing listed: nothing vanished, nothing to write
    reports.note_heartbeat("n1", alive)
    assert reports.core.fleet.overlay(make_instance("i1", node_id="n1", state=S.RUNNING)).restarts == 1

    stray = InstanceStatus(instance_id="old", container_id="c9", state=ContainerState.RUNNING, remove_at_ms=1)
    exited = InstanceStatus(instance_id="i2", container_id="c", state=ContainerState.EXITED, exit_code=3)
    change = partial(exited, stray)
    assert reports.needs_work("n1", change)
    reports.note_heartbeat("n1", change)
    await reports.heartbeat("n1", change)
    assert (await state_of(reports, "i2"))[:2] == (S.UNHEALTHY, "the container is exited (exit code 3)")
    assert (await state_of(reports, "i1"))[0] is S.RUNNING  # not listed: as it was
    assert [u.instance_id for u in reports.core.fleet.unwanted("n1")] == ["old"]

    went = partial(gone=("i1", "old"))
    assert reports.needs_work("n1", went)
    reports.note_heartbeat("n1", went)
    await reports.heartbeat("n1", went)
    assert await state_of(reports, "i1") == (S.UNHEALTHY, MISSING, 1)
    assert reports.core.fleet.unwanted("n1") == ()


async def test_a_node_judged_silent_is_asked_for_a_full_heartbeat(reports: AgentReports) -> None:
    """Its instances turn unhealthy; the partial heartbeats of an agent that was only slow would not list
    them (nothing changed on the host), so the coordinator asks for the whole truth."""
    fleet = reports.core.fleet
    await put(reports, S.RUNNING)
    session = fleet.attach("n1")
    await reports.node_status_changed("n1", NodeStatus.READY, NodeStatus.HEARTBEAT_ABNORMAL)
    assert (await state_of(reports))[0] is S.UNHEALTHY
    assert isinstance(session.outbox.popleft(), ReportRequest)
    await reports.heartbeat("n1", running())  # the full heartbeat it answers with
    assert (await state_of(reports))[:2] == (S.RUNNING, None)
    fleet.detach(session)


async def test_an_unanswering_engine_makes_running_instances_unhealthy(
    reports: AgentReports,
) -> None:
    await put(reports, S.STARTING)
    await reports.heartbeat("n1", running())
    down = Heartbeat(engine_error="the container engine does not answer: connection refused")
    reports.note_heartbeat("n1", down)
    assert reports.needs_work("n1", down)
    await reports.heartbeat("n1", down)
    assert await state_of(reports) == (S.UNHEALTHY, down.engine_error, 1)
    assert reports.core.fleet.engine_error("n1") == down.engine_error
    reports.note_heartbeat("n1", running())
    await reports.heartbeat("n1", running())
    assert (await state_of(reports))[:2] == (S.RUNNING, None)
    assert reports.core.fleet.engine_error("n1") is None


async def test_a_failed_deploy_is_dropped_by_the_agent_it_failed_on(reports: AgentReports) -> None:
    """Failed before it ever ran: nobody wants it any more, so its agent is told to remove it (and with
    that, to stop retrying it)."""
    await put(reports, S.PROVISIONING)
    session = reports.core.fleet.attach("n1")
    busy = "Bind for 127.0.0.1:30000 failed: port is already allocated"
    await reports.event("n1", InstanceEvent(instance_id="i1", kind=EventKind.FAILED, message=busy))
    assert await state_of(reports) == (S.ERROR, busy, 0)
    sent = session.outbox.popleft()
    assert isinstance(sent, Command) and sent.kind is CommandKind.REMOVE
    assert sent.instance_id == "i1"
    # Its removal reported back changes nothing: it stays failed, with its reason.
    await reports.event("n1", InstanceEvent(instance_id="i1", kind=EventKind.REMOVED))
    assert await state_of(reports) == (S.ERROR, busy, 0)


@pytest.mark.parametrize("state", [S.UNHEALTHY, S.STARTING])
async def test_a_failed_re_creation_keeps_the_instance_wanted(
    reports: AgentReports, state: InstanceState
) -> None:
    """Its container vanished (found so by a heartbeat, or by the owner's start or restart) and making it
    again failed: it keeps its ports and stays wanted (the agent retries with its back-off); the reason is
    shown."""
    await put(reports, state)
    session = reports.core.fleet.attach("n1")
    await reports.event("n1", InstanceEvent(instance_id="i1", kind=EventKind.FAILED, message="busy"))
    assert await state_of(reports) == (S.UNHEALTHY, "busy", 1)
    assert not session.outbox


async def test_a_hello_reporting_ended_instances_asks_to_remove_them_at_once(reports: AgentReports) -> None:
    """Failed or released while the agent was away, yet their containers are on the host: removed now,
    not after the grace a container nobody knows gets."""
    await put(reports, S.RUNNING, "keep")
    async with reports.core.store.write() as conn:
        await instances_store.insert_instance(conn, make_instance("failed", node_id="n1", state=S.ERROR))
        await instances_store.insert_instance(conn, make_instance("gone", node_id="n1", state=S.RELEASED))
        await nodes_store.insert_node(conn, make_node("n2"))
        await instances_store.insert_instance(conn, make_instance("elsewhere", node_id="n2", state=S.ERROR))
    reported = [
        InstanceStatus(instance_id=i, container_id=f"c-{i}", state=ContainerState.RUNNING)
        for i in ("keep", "failed", "gone", "elsewhere", "unknown")
    ]
    welcome = await reports.hello("n1", Hello(instances=reported))
    assert [w.instance.id for w in welcome.desired] == ["keep"]
    assert sorted(welcome.remove) == ["failed", "gone"]


async def test_a_node_without_a_core_count_takes_its_agents(reports: AgentReports) -> None:
    """Created with a processor description only: the cores its agent reports count, once; an operator's
    count is never overwritten."""
    async with reports.core.store.write() as conn:
        await nodes_store.insert_node(
            conn, make_node("described", cpu_count=0, processor="AMD Ryzen 9 5950X")
        )
    hello = Hello(cpu_count=16)
    await reports.hello("described", hello)
    await reports.hello("n1", hello)
    async with reports.core.store.read() as conn:
        described = await nodes_store.get_node(conn, "described")
        counted = await nodes_store.get_node(conn, "n1")
    assert described is not None and (described.cpu_count, described.processor) == (16, "AMD Ryzen 9 5950X")
    assert counted is not None and counted.cpu_count == 2
    await reports.hello("described", Hello(cpu_count=4))
    async with reports.core.store.read() as conn:
        again = await nodes_store.get_node(conn, "described")
    assert again is not None and again.cpu_count == 16
