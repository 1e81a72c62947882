"""The gateway keeps one task per idle session: the outbox's writer and the database worker exist only
while they have something to do, and still write and work in order (10,000 sessions: every task is memory
and turns of the event loop)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import grpc

from coordinator.domain.agents import ContainerState, Heartbeat, InstanceStatus, LogsRequest
from coordinator.fleet.live import Session
from coordinator.gateway.servicer import Inbox, Writer


class SlowStream:
    """A stream whose writes take a moment, as a busy connection's do."""

    def __init__(self) -> None:
        self.written: list[Any] = []

    async def write(self, message: Any) -> None:
        await asyncio.sleep(0.01)
        self.written.append(message)


RUNNING, EXITED = ContainerState.RUNNING, ContainerState.EXITED


def command(n: int) -> LogsRequest:
    return LogsRequest(request_id=f"c{n}")


def tasks_named(prefix: str) -> int:
    return sum(1 for t in asyncio.all_tasks() if getattr(t.get_coro(), "__qualname__", "").startswith(prefix))


async def test_the_writer_runs_only_while_there_is_something_to_write() -> None:
    session, stream = Session("n1"), SlowStream()
    writer = Writer(session, cast(grpc.aio.ServicerContext[Any, Any], stream))
    session.wake = writer.wake
    assert tasks_named("Writer._write") == 0
    session.send(command(1))
    session.send(command(2))
    await asyncio.sleep(0)
    assert tasks_named("Writer._write") == 1  # one writer, however many messages
    await asyncio.sleep(0.015)
    session.send(command(3))  # while it writes: the same writer takes it
    await asyncio.sleep(0.05)
    assert [m.logs.request_id for m in stream.written] == ["c1", "c2", "c3"]
    assert tasks_named("Writer._write") == 0
    session.send(command(4))  # idle again: a new writer comes and goes
    await asyncio.sleep(0.03)
    assert [m.logs.request_id for m in stream.written][-1] == "c4"
    assert tasks_named("Writer._write") == 0
    await writer.close()


async def test_the_inbox_works_in_order_and_only_while_it_has_work() -> None:
    done: list[Any] = []

    async def handle(item: tuple[str, Any]) -> None:
        await asyncio.sleep(0.005)
        done.append(item[1])

    inbox = Inbox(handle)
    for n in range(3):
        inbox.put(("event", f"e{n}"))
    h1 = Heartbeat(instances=(InstanceStatus("a", state=RUNNING), InstanceStatus("b", state=RUNNING)))
    h2 = Heartbeat(partial=True, instances=(InstanceStatus("a", state=EXITED),), gone=frozenset({"b"}))
    inbox.put(("heartbeat", h1))
    inbox.put(("heartbeat", h2))  # takes h1's place, with what h1 said that h2 does not change
    await asyncio.sleep(0)
    assert tasks_named("Inbox._work") == 1
    await asyncio.sleep(0.1)
    assert done[:3] == ["e0", "e1", "e2"] and len(done) == 4
    assert done[3] == Heartbeat(instances=(InstanceStatus("a", state=EXITED),))  # full: a exited, b gone
    assert tasks_named("Inbox._work") == 0
    inbox.put(("event", "e3"))
    await asyncio.sleep(0.02)
    assert done[-1] == "e3" and tasks_named("Inbox._work") == 0
    await inbox.close()
