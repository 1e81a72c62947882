"""An instance's container output, read through its node's agent session (the coordinator never opens
Docker): the last ``tail`` lines, and with ``follow`` what comes next until the reader leaves."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator

from coordinator.domain.agents import LogsRequest
from coordinator.domain.records import Principal
from coordinator.fleet.logs import TooManyLogStreams
from coordinator.service.core import Core
from coordinator.service.errors import BadRequest, Conflict, ServiceError, Unavailable
from coordinator.service.instances import InstanceService

MAX_TAIL = 10_000
#: How often a reader with no output hears None (and its caller checks on its client).
IDLE_S = 0.25
#: How long the agent has to answer at all (an agent older than log requests never does).
FIRST_CHUNK_S = 10.0


class TooManyRequests(ServiceError):
    status = 429


class LogEnded(Exception):
    """The agent ended the stream early; the message says why."""


class LogService:
    def __init__(self, core: Core, instances: InstanceService) -> None:
        self.core = core
        self.instances = instances

    async def read(
        self, caller: Principal, instance_id: str, tail: int, follow: bool, idle_s: float = IDLE_S
    ) -> AsyncGenerator[bytes | None, None]:
        """Chunks of whole lines; None after ``idle_s`` without any (the caller checks on its client).
        Ends with the output (no follow), or raises LogEnded when the agent ends it early."""
        if not 0 <= tail <= MAX_TAIL:
            raise BadRequest(f"tail: at most {MAX_TAIL} lines", field="tail")
        inst = await self.instances.get(caller, instance_id)
        if inst.node_id is None:
            raise Conflict(f"instance {instance_id} is on no node yet", field="id")
        node_id = inst.node_id
        session = self.core.fleet.sessions.get(node_id)
        cluster = self.core.cluster

        def send(request: LogsRequest) -> None:
            """Down this coordinator's session, or through the holder of the node's (fleet/log_relay.py)."""
            if session is not None:
                session.send(request)
            elif cluster is not None:
                cluster.ask_logs(node_id, request)

        if session is None and (cluster is None or node_id not in cluster.owners):
            raise Unavailable(f"node {node_id}'s agent is not connected")
        holder = cluster.owners.get(node_id) if session is None and cluster is not None else None

        def moved() -> bool:
            """The relaying holder is no longer the node's (it died, or the agent went elsewhere)."""
            return holder is not None and cluster is not None and cluster.owners.get(node_id) != holder

        request_id = str(uuid.uuid4())
        try:
            reader = self.core.fleet.logs.open(request_id, node_id)
        except TooManyLogStreams as exc:
            raise TooManyRequests(str(exc)) from exc
        ended = False
        try:
            send(LogsRequest(request_id, instance_id, tail, follow))
            try:
                first = await asyncio.wait_for(reader.chunks.get(), FIRST_CHUNK_S)
            except TimeoutError:
                raise Unavailable(f"node {node_id}'s agent did not answer (too old for logs?)") from None
            if first.end and first.error and first.from_agent:  # refused before it began
                ended = True
                if "already streams" in first.error:
                    raise TooManyRequests(f"node {node_id}: {first.error}")
                raise Conflict(f"instance {instance_id}: {first.error}", field="id")
            chunk = first
            while True:
                if chunk.data:
                    yield chunk.data
                if chunk.end:
                    ended = chunk.from_agent
                    if chunk.error:
                        raise LogEnded(chunk.error)
                    return
                while True:
                    try:
                        chunk = await asyncio.wait_for(reader.chunks.get(), idle_s)
                        break
                    except TimeoutError:
                        if moved():
                            ended = True
                            raise LogEnded("the node's session moved to another coordinator") from None
                        yield None
        finally:
            self.core.fleet.logs.close(request_id)
            if not ended:
                send(LogsRequest(request_id, cancel=True))
