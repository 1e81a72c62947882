"""The agent's session loop: every way a call can end is "session lost, reconnect with back-off", never the
end of the process; only a refusal retrying cannot fix ends it. The calls' ends are the exception types
grpc.aio really raises (the real daemons' restarts are in tests/integration/test_faults.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from agent.config import AgentConfig
from agent.executor import Executor
from agent.identity import EnrollmentRefused, Identity
from agent.runtime.base import ContainerInfo, PullPolicy
from agent.runtime.memory import MemoryRuntime
from agent.session import AgentSession, Outbox
from agent.state import Report, ReportKind
from agent.telemetry import Telemetry
from protos import moorage_pb2 as pb
from protos import moorage_pb2_grpc as pb_grpc


class ValidIdentity:
    node_id = "n"

    def not_after(self) -> float:
        return time.time() + 3600


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=code.name)


class ScriptedSession(AgentSession):
    """Each attempt ends as the next entry says (an exception raised, or None: the call ended with EOF)."""

    def __init__(self, tmp: Path, ends: list[Callable[[], BaseException] | None]) -> None:
        config = AgentConfig(data_dir=tmp, reconnect_initial_s=0.001, reconnect_max_s=0.004)
        runtime = MemoryRuntime()
        outbox = Outbox(config.event_buffer)
        executor = Executor(runtime, "n", PullPolicy.MISSING, outbox.report)
        identity = cast(Identity, ValidIdentity())
        super().__init__(config, identity, runtime, executor, Telemetry(disk_path="/"), outbox)
        self.ends = ends
        self.attempts = 0
        self.exhausted = asyncio.Event()

    async def _session(self) -> None:
        self.attempts += 1
        if not self.ends:
            self.exhausted.set()
            await asyncio.Event().wait()
        end = self.ends.pop(0)
        if end is not None:
            raise end()


LOST: list[Callable[[], BaseException] | None] = [
    lambda: rpc_error(grpc.StatusCode.UNAVAILABLE),  # the coordinator is down, or went away
    lambda: asyncio.InvalidStateError("not grpc's"),  # grpc's own is turned into the call's status
    asyncio.CancelledError,  # grpc cancelled the call itself (its channel closed); we were not cancelled
    None,  # EOF: the coordinator closed the session
    lambda: rpc_error(grpc.StatusCode.INTERNAL),
    lambda: ConnectionError("the coordinator did not answer Hello with Welcome"),
    TimeoutError,  # no Welcome in time
    lambda: OSError("connection reset"),
    lambda: RuntimeError("anything else"),
]


async def test_every_end_of_a_call_is_a_lost_session_and_the_loop_goes_on(tmp_path: Path) -> None:
    session = ScriptedSession(tmp_path, list(LOST))
    loop = asyncio.create_task(session.run())
    await asyncio.wait_for(session.exhausted.wait(), 5)
    assert session.attempts == len(LOST) + 1 and not loop.done()
    loop.cancel()  # the agent stopping: a real cancellation still ends the loop
    with pytest.raises(asyncio.CancelledError):
        await loop


@pytest.mark.parametrize("code", [grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED])
async def test_only_a_refusal_ends_it(tmp_path: Path, code: grpc.StatusCode) -> None:
    session = ScriptedSession(
        tmp_path, [lambda: rpc_error(grpc.StatusCode.UNAVAILABLE), lambda: rpc_error(code)]
    )
    with pytest.raises(EnrollmentRefused, match="refused this node"):
        await asyncio.wait_for(session.run(), 5)
    assert session.attempts == 2


async def test_a_lost_session_tries_the_next_coordinator(tmp_path: Path) -> None:
    """Coordinators sharing one database: each lost session moves on to the next address, round the list."""
    session = ScriptedSession(tmp_path, [lambda: rpc_error(grpc.StatusCode.UNAVAILABLE)] * 4)
    session.config = dataclasses.replace(session.config, coordinator="c1:7443, c2:7443,c3:7443")
    dialled: list[str] = []
    scripted = session._session

    async def recording() -> None:
        dialled.append(session.target)
        await scripted()

    session._session = recording  # type: ignore[method-assign]
    loop = asyncio.create_task(session.run())
    await asyncio.wait_for(session.exhausted.wait(), 5)
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop
    assert dialled == ["c1:7443", "c2:7443", "c3:7443", "c1:7443", "c2:7443"]


def test_coordinator_addresses_are_checked() -> None:
    assert AgentConfig(coordinator="a:1,b:2").coordinators() == ["a:1", "b:2"]
    assert AgentConfig(coordinator="[::1]:7443").enroll_target() == "[::1]:7444"
    with pytest.raises(ValueError, match="'b' is not HOST:PORT"):
        AgentConfig(coordinator="a:1,b")


async def test_the_heartbeat_confirming_a_start_is_asked_for_once_the_start_is_on_its_way() -> None:
    """Heartbeats leave the outbox before events, so one built while the start waits would overtake it and
    find the instance not yet starting (the coordinator would then confirm only a whole interval later).
    The early heartbeat is asked for when the start is taken to be sent, and not for other events."""
    outbox = Outbox(16)
    outbox.report(Report(ReportKind.CREATED, "i1", "c1"))
    outbox.report(Report(ReportKind.STARTED, "i1", "c1"))
    assert not outbox.beat_now.is_set()
    assert (await outbox.get()).event.kind == pb.EVENT_KIND_CREATED
    assert not outbox.beat_now.is_set()
    assert (await outbox.get()).event.kind == pb.EVENT_KIND_STARTED
    assert outbox.beat_now.is_set()


class RefusingCoordinator(pb_grpc.CoordinatorServicer):
    """Refuses every session before reading its Hello, as the coordinator does for a deleted node."""

    async def Enroll(
        self, request: pb.EnrollRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.EnrollResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this test")

    async def Connect(  # type: ignore[override]  # as the coordinator's: aborts, returns nothing
        self, request_iterator: object, context: grpc.aio.ServicerContext[object, object]
    ) -> None:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "this node was deleted or never enrolled")


class SlowListing(MemoryRuntime):
    """A host with many containers: gathering the Hello takes longer than the refusal takes to arrive. The
    listing ends only once the call has (so the race goes the same way on any machine)."""

    def __init__(self, calls: list[Any]) -> None:
        super().__init__()
        self.calls = calls

    async def list(self, node_id: str) -> list[ContainerInfo]:
        await self.calls[-1].code()
        return await super().list(node_id)


class LocalIdentity(ValidIdentity):
    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.local_channel_credentials()


async def test_a_refusal_that_arrives_before_the_hello_is_written_still_ends_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The coordinator refuses before it reads the Hello; a write to the ended call raises InvalidStateError,
    which says nothing of why. Taken for a lost session, a deleted node's agent retried for ever."""
    calls: list[Any] = []  # each Connect() the session makes
    stub = pb_grpc.CoordinatorStub

    def recording(channel: grpc.aio.Channel) -> Any:
        made: Any = stub(channel)
        connect = made.Connect

        def recorded() -> Any:
            calls.append(connect())
            return calls[-1]

        made.Connect = recorded
        return made

    monkeypatch.setattr(pb_grpc, "CoordinatorStub", recording)
    server = grpc.aio.server()
    pb_grpc.add_CoordinatorServicer_to_server(RefusingCoordinator(), server)
    port = server.add_secure_port("127.0.0.1:0", grpc.local_server_credentials())
    await server.start()
    try:
        config = AgentConfig(
            data_dir=tmp_path, coordinator=f"127.0.0.1:{port}", reconnect_initial_s=0.01, reconnect_max_s=0.02
        )
        runtime = SlowListing(calls)
        outbox = Outbox(config.event_buffer)
        executor = Executor(runtime, "n", PullPolicy.MISSING, outbox.report)
        identity = cast(Identity, LocalIdentity())
        session = AgentSession(config, identity, runtime, executor, Telemetry(disk_path="/"), outbox)
        with pytest.raises(EnrollmentRefused, match="deleted or never enrolled"):
            await asyncio.wait_for(session.run(), 5)
        assert len(calls) == 1  # refused once, not retried
    finally:
        await server.stop(None)
