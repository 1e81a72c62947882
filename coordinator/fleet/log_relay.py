"""Logs of a node whose session another coordinator holds, relayed over the bus (LISTEN/NOTIFY): the asking
coordinator sends the request to the holder, which sends it down its session and publishes each chunk
back, cut at line ends into pieces that fit a NOTIFY payload (8000 bytes, base64 included). The reader on
the asking side is the same as for a local session (fleet/logs.py), so its bounds hold as they do there."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from typing import Any

from coordinator.domain.agents import LogChunk, LogsRequest
from coordinator.fleet.live import Fleet
from coordinator.fleet.logs import TooManyLogStreams

#: Raw bytes per relayed piece: base64 makes 4/3 of it, and the message's other fields need a little room.
PIECE = 4500

Publish = Callable[[dict[str, Any]], Awaitable[bool]]


def pieces(data: bytes, size: int = PIECE) -> list[bytes]:
    """``data`` in pieces of at most ``size`` bytes, each ending at a line's end where one fits (a reader
    renders each chunk as whole lines); at least one piece, empty for no data."""
    out: list[bytes] = []
    while len(data) > size:
        cut = data.rfind(b"\n", 0, size) + 1 or size
        out.append(data[:cut])
        data = data[cut:]
    out.append(data)
    return out


class LogRelay:
    def __init__(
        self, me: str, fleet: Fleet, publish: Publish, spawn: Callable[[Awaitable[Any]], None]
    ) -> None:
        self.me = me
        self.fleet = fleet
        self.publish = publish
        self.spawn = spawn
        #: Requests this coordinator carries out for another, by request id.
        self._forwarding: dict[str, asyncio.Task[None]] = {}

    def ask(self, owner: str, node_id: str, request: LogsRequest) -> None:
        """On the asking side: the request (or its cancel) to the node's holder."""
        message = {
            "t": "logs",
            "from": self.me,
            "to": owner,
            "node": node_id,
            "id": request.request_id,
            "instance": request.instance_id,
            "tail": request.tail,
            "follow": request.follow,
            "cancel": request.cancel,
        }
        self.spawn(self.publish(message))

    def on_request(self, message: dict[str, Any]) -> None:
        """On the holder."""
        if message.get("to") != self.me:
            return
        request_id = str(message["id"])
        if message.get("cancel"):
            task = self._forwarding.pop(request_id, None)
            if task is not None:
                task.cancel()
            return
        if request_id not in self._forwarding:
            task = asyncio.create_task(self._forward(message), name=f"log-relay-{request_id}")
            self._forwarding[request_id] = task
            task.add_done_callback(lambda _: self._forwarding.pop(request_id, None))

    def on_chunk(self, message: dict[str, Any]) -> None:
        """On the asking side: a piece of what the holder's agent sent."""
        if message.get("to") != self.me:
            return
        self.fleet.logs.deliver(
            LogChunk(
                str(message["id"]),
                base64.b64decode(str(message.get("data", ""))),
                bool(message.get("end")),
                str(message.get("error", "")),
            )
        )

    async def _forward(self, message: dict[str, Any]) -> None:
        request_id, node_id, asker = str(message["id"]), str(message["node"]), str(message["from"])

        async def tell(data: bytes, end: bool, error: str) -> None:
            parts = pieces(data)
            for n, part in enumerate(parts):
                last = n == len(parts) - 1
                sent = await self.publish(
                    {
                        "t": "log",
                        "from": self.me,
                        "to": asker,
                        "id": request_id,
                        "data": base64.b64encode(part).decode(),
                        "end": end and last,
                        "error": error if last else "",
                    }
                )
                if not sent:  # the bus is down: the asker will not hear the rest (nor tell us to stop)
                    raise ConnectionError("the bus dropped a relayed log piece")

        session = self.fleet.sessions.get(node_id)
        if session is None:
            await tell(b"", True, f"node {node_id}'s agent is not connected to its holder any more")
            return
        try:
            reader = self.fleet.logs.open(request_id, node_id)
        except TooManyLogStreams as exc:
            await tell(b"", True, str(exc))
            return
        ended = False
        try:
            session.send(
                LogsRequest(
                    request_id,
                    str(message.get("instance", "")),
                    int(message.get("tail") or 0),
                    bool(message.get("follow")),
                )
            )
            while not ended:
                chunk = await reader.chunks.get()
                await tell(chunk.data, chunk.end, chunk.error)
                ended = chunk.end and chunk.from_agent
        finally:
            self.fleet.logs.close(request_id)
            if not ended:
                session.send(LogsRequest(request_id, cancel=True))
