"""The node channel across the coordinators on one PostgreSQL database.

Each agent session lives on one coordinator, recorded in the database (node_sessions). A command for a node
whose session is here goes down that session; for a node held elsewhere it travels over the bus (LISTEN/
NOTIFY) to its holder, as ids only: the holder reads the instance, whose desired state the use case stored
before telling, and answers over the bus when the caller waits. Every batch period each coordinator touches
its row and re-reads who holds what, so a holder that died stops counting within a few periods; the leader
(the bus's advisory lock) watches the nodes nobody holds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from common.logging import get
from coordinator.domain.agents import ClusterView, Command, CommandKind, CommandResult, LogsRequest
from coordinator.domain.records import NodeStatus
from coordinator.fleet.live import Fleet
from coordinator.fleet.log_relay import LogRelay

log = get("coordinator.cluster")

#: How a relayed command is carried out on the holder: (node, kind, instance id, command id, wait or None
#: for fire and forget) -> the agent's result.
Deliver = Callable[[str, CommandKind, str, str, float | None], Awaitable[CommandResult | None]]


class Bus(Protocol):
    leading: bool

    async def publish(self, message: dict[str, Any]) -> bool: ...


class Membership(Protocol):
    """The rows (store/cluster.py). Times are the database's clock, so hosts' clocks need not agree."""

    async def join(self, me: str, name: str, address: str) -> None: ...
    async def touch(self, me: str) -> None: ...
    async def leave(self, me: str) -> None: ...
    async def hold(self, node_id: str, me: str) -> float | None: ...
    async def view(self, me: str, alive_s: float) -> ClusterView: ...


class ClusterChannel:
    """A NodeChannel over this coordinator's sessions and, through the bus, every other's."""

    def __init__(
        self,
        me: str,
        fleet: Fleet,
        bus: Bus,
        membership: Membership,
        deliver: Deliver,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.me = me
        self.fleet = fleet
        self.bus = bus
        self.membership = membership
        self.deliver = deliver
        self.clock = clock
        #: Nodes held by another live coordinator, to that coordinator.
        self.owners: dict[str, str] = {}
        #: HOST:PORT of this coordinator's sessions, and of every live one's (this one first).
        self.address = ""
        self.addresses: tuple[str, ...] = ()
        self._waits: dict[str, asyncio.Future[CommandResult | None]] = {}
        #: A counter of "held" news, and the value it had when each node's last came: a refresh whose read
        #: began before that news must not undo it.
        self._news = 0
        self._news_of: dict[str, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "held": self._on_held,
            "command": self._on_command,
            "result": self._on_result,
            "close": self._on_close,
            "placement": lambda _message: self.placement_changed(),
            "node": self._on_node,
        }
        self.logs = LogRelay(me, fleet, bus.publish, self._spawn)
        self._handlers.update(logs=self.logs.on_request, log=self.logs.on_chunk)
        fleet.on_change = self._tell_node
        #: Called when another coordinator changed what placement reads (this one's view re-reads it).
        self.placement_changed: Callable[[], None] = lambda: None

    @property
    def alive_s(self) -> float:
        """A coordinator whose row is older than this is gone."""
        return max(5 * self.fleet.options.batch_period_s, 5.0)

    # ------------------------------------------------------------ NodeChannel

    def is_connected(self, node_id: str) -> bool:
        return self.fleet.is_connected(node_id) or node_id in self.owners

    def post(self, node_id: str, command: Command) -> bool:
        if self.fleet.is_connected(node_id):
            return self.fleet.post(node_id, command)
        owner = self.owners.get(node_id)
        if owner is None:
            return False
        self._spawn(self.bus.publish(self._command(owner, node_id, command, None)))
        return True

    async def send(self, node_id: str, command: Command, wait_s: float) -> CommandResult | None:
        if self.fleet.is_connected(node_id):
            return await self.fleet.send(node_id, command, wait_s)
        owner = self.owners.get(node_id)
        if owner is None:
            return None
        waiter: asyncio.Future[CommandResult | None] = asyncio.get_running_loop().create_future()
        self._waits[command.command_id] = waiter
        try:
            async with asyncio.timeout(wait_s):  # the publish counts too: a slow bus is no answer
                if not await self.bus.publish(self._command(owner, node_id, command, wait_s)):
                    return None
                return await waiter
        except TimeoutError:
            return None
        finally:
            self._waits.pop(command.command_id, None)

    def ask_logs(self, node_id: str, request: LogsRequest) -> bool:
        """A log request (or its cancel) for a node held by another live coordinator; False: none holds it."""
        owner = self.owners.get(node_id)
        if owner is None:
            return False
        self.logs.ask(owner, node_id, request)
        return True

    def close(self, node_id: str) -> None:
        self.fleet.close(node_id)
        self.owners.pop(node_id, None)
        self._spawn(self.bus.publish({"t": "close", "from": self.me, "node": node_id}))

    def tell_placement_changed(self) -> None:
        self._spawn(self.bus.publish({"t": "placement", "from": self.me}))

    # ------------------------------------------------------------ sessions and the view

    async def join(self, name: str, address: str) -> None:
        self.address = address
        self.addresses = (address,)
        await self.membership.join(self.me, name, address)

    async def leave(self) -> None:
        await self.membership.leave(self.me)

    async def hold(self, node_id: str) -> None:
        """An agent's session started here: recorded, and the others stop watching the node at once. A
        session the database already knows a newer one of (the agent moved on meanwhile) is let go."""
        session = self.fleet.sessions.get(node_id)
        since = await self.membership.hold(node_id, self.me)
        if session is None or self.fleet.sessions.get(node_id) is not session:
            return  # it ended while being recorded
        if since is None:
            log.info("a newer session of the node is elsewhere; this one ends", node_id=node_id)
            self.fleet.held_elsewhere(node_id, None)
            return
        session.since = since
        self.owners.pop(node_id, None)
        self.fleet.remote.pop(node_id, None)
        self._spawn(self.bus.publish({"t": "held", "from": self.me, "node": node_id, "since": since}))

    async def refresh(self) -> None:
        """Once a batch period: say this coordinator lives, and re-read who holds what."""
        await self.membership.touch(self.me)
        began = self._news
        view = await self.membership.view(self.me, self.alive_s)
        self.addresses = (self.address, *(a for a in view.addresses if a != self.address))
        fresh = {n for n, seen in self._news_of.items() if seen > began}  # news the read may predate
        for node_id in set(self.owners) - set(view.owners) - fresh:
            self.owners.pop(node_id, None)
            self.fleet.held_nowhere(node_id)
        for node_id, owner in view.owners.items():
            if node_id in fresh:
                continue
            session = self.fleet.sessions.get(node_id)
            if session is not None and session.since is None:
                continue  # its Hello is being recorded right now: the newest session there is
            if session is not None and session.since is not None and session.since >= view.since[node_id]:
                # Ours is the newer session, yet the row names another: record ours again.
                self._spawn(self.hold(node_id))
                continue
            self.owners[node_id] = owner
            self.fleet.held_elsewhere(
                node_id, view.last_checked.get(node_id), view.engine_errors.get(node_id, "")
            )
        for node_id in view.orphans - fresh:
            if self.fleet.is_connected(node_id):
                continue
            if self.bus.leading:
                if node_id not in self.fleet.live:
                    log.info("watching a node no coordinator holds", node_id=node_id)
                    self.fleet.watch(node_id, view.last_checked.get(node_id))
            elif node_id in self.fleet.live:
                self.fleet.forget(node_id)  # no longer the leader: not this one's to judge

    # ------------------------------------------------------------ the bus

    def receive(self, message: dict[str, Any]) -> None:
        handler = self._handlers.get(str(message.get("t")))
        if handler is not None and message.get("from") != self.me:
            handler(message)

    def _on_held(self, message: dict[str, Any]) -> None:
        node_id, owner, since = str(message["node"]), str(message["from"]), float(message.get("since") or 0)
        session = self.fleet.sessions.get(node_id)
        if session is not None and (session.since is None or session.since > since):
            return  # old news: the agent has come here since (or is coming: its Hello is being recorded)
        self._news += 1
        self._news_of[node_id] = self._news
        self.owners[node_id] = owner
        # Our session of it, if any, is the older one (the agent has one at a time): let it go.
        self.fleet.held_elsewhere(node_id, self.clock())

    def _tell_node(self, node_id: str) -> None:
        """A node judged here changed status or engine error: the others show it now, not at their next
        read of the rows."""
        live = self.fleet.live.get(node_id)
        if live is None:
            return
        last = live.last_heartbeat if live.last_heartbeat is not None else live.expected_since
        message = {
            "t": "node",
            "from": self.me,
            "node": node_id,
            "last": last,
            "error": live.engine_error[:2000],
            "silent": live.status is not NodeStatus.READY,
        }
        self._spawn(self.bus.publish(message))

    def _on_node(self, message: dict[str, Any]) -> None:
        node_id = str(message["node"])
        if self.owners.get(node_id) != message["from"] or self.fleet.is_connected(node_id):
            return  # not the holder's word as this one knows it (the next read settles who holds it)
        last = message.get("last")
        self.fleet.held_elsewhere(
            node_id,
            float(last) if last is not None else None,
            str(message.get("error", "")),
            bool(message.get("silent")),
        )

    def _on_close(self, message: dict[str, Any]) -> None:
        node_id = str(message["node"])
        self.fleet.close(node_id)
        self.owners.pop(node_id, None)

    def _on_command(self, message: dict[str, Any]) -> None:
        if message.get("to") != self.me:
            return
        self._spawn(self._relay(message))

    async def _relay(self, message: dict[str, Any]) -> None:
        wait_s = message.get("wait")
        result = await self.deliver(
            str(message["node"]),
            CommandKind[str(message["kind"])],
            str(message["instance"]),
            str(message["id"]),
            float(wait_s) if wait_s is not None else None,
        )
        if wait_s is None:
            return
        answer: dict[str, Any] = {"t": "result", "from": self.me, "to": message["from"], "id": message["id"]}
        if result is not None:
            answer.update(
                instance=result.instance_id,
                ok=result.ok,
                error=result.error[:2000],
                container=result.container_id,
            )
        await self.bus.publish(answer)

    def _on_result(self, message: dict[str, Any]) -> None:
        if message.get("to") != self.me:
            return
        waiter = self._waits.get(str(message["id"]))
        if waiter is None or waiter.done():
            return
        if "ok" not in message:
            waiter.set_result(None)  # the holder could not reach the agent
            return
        waiter.set_result(
            CommandResult(
                str(message["id"]),
                str(message.get("instance", "")),
                bool(message["ok"]),
                str(message.get("error", "")),
                str(message.get("container", "")),
            )
        )

    def _command(self, owner: str, node_id: str, command: Command, wait_s: float | None) -> dict[str, Any]:
        return {
            "t": "command",
            "from": self.me,
            "to": owner,
            "node": node_id,
            "kind": command.kind.name,
            "instance": command.instance_id,
            "id": command.command_id,
            "wait": wait_s,
        }

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a message between coordinators failed", exc_info=task.exception())
