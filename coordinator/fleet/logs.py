"""Log requests this coordinator sent down its agent sessions, and the queues their chunks go to. At most
PER_NODE at once per node (a node's agent streams no more anyway), and a listener that cannot keep up is
ended rather than buffered for."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from coordinator.domain.agents import LogChunk

PER_NODE = 4
#: Chunks (each at most 16 KiB of lines) waiting for their reader before it is cut off.
QUEUED_CHUNKS = 64


class TooManyLogStreams(Exception):
    pass


@dataclass
class LogReader:
    request_id: str
    node_id: str
    chunks: asyncio.Queue[LogChunk] = field(default_factory=lambda: asyncio.Queue(QUEUED_CHUNKS))


class LogReaders:
    def __init__(self) -> None:
        self._readers: dict[str, LogReader] = {}

    def open(self, request_id: str, node_id: str) -> LogReader:
        if sum(r.node_id == node_id for r in self._readers.values()) >= PER_NODE:
            raise TooManyLogStreams(f"node {node_id} already streams {PER_NODE} logs; try again later")
        reader = self._readers[request_id] = LogReader(request_id, node_id)
        return reader

    def deliver(self, chunk: LogChunk) -> None:
        reader = self._readers.get(chunk.request_id)
        if reader is None:
            return  # its reader left; the agent is told to stop
        try:
            reader.chunks.put_nowait(chunk)
        except asyncio.QueueFull:
            self._readers.pop(chunk.request_id, None)
            while not reader.chunks.empty():
                reader.chunks.get_nowait()
            reader.chunks.put_nowait(
                LogChunk(chunk.request_id, b"", True, "the reader fell too far behind", from_agent=False)
            )

    def close(self, request_id: str) -> None:
        self._readers.pop(request_id, None)

    def node_gone(self, node_id: str) -> None:
        """Its session ended: every reader of its logs ends too."""
        for reader in [r for r in self._readers.values() if r.node_id == node_id]:
            self.deliver(
                LogChunk(reader.request_id, b"", True, "the node's agent disconnected", from_agent=False)
            )
            self._readers.pop(reader.request_id, None)

    def __len__(self) -> int:
        return len(self._readers)
