"""Containers as dictionary entries (create, start, stop and remove change state at once): the runtime
the agent's logic is unit-tested over, and that many agents in one process run on for tests and benchmarks
that need Ready nodes in numbers rather than containers. Docker is proven by the tests that use it."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import replace

from agent.runtime.base import (
    LABEL_INSTANCE,
    ContainerEvent,
    ContainerInfo,
    ContainerNotFound,
    ContainerSpec,
    ContainerStatus,
    ImageNotFound,
    PullPolicy,
)

_ids = itertools.count(1)


class NoEvents:
    def __aiter__(self) -> AsyncIterator[ContainerEvent]:
        return self

    async def __anext__(self) -> ContainerEvent:
        await asyncio.Event().wait()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        return None


class MemoryLogs:
    """The last ``tail`` lines of a list, then (``follow``) the lines appended to it, polled."""

    def __init__(self, lines: list[bytes], tail: int, follow: bool) -> None:
        self._lines = lines
        self._at = max(len(lines) - tail, 0)
        self._follow = follow
        self._closed = False

    def __aiter__(self) -> MemoryLogs:
        return self

    async def __anext__(self) -> bytes:
        while self._at >= len(self._lines):
            if self._closed or not self._follow:
                raise StopAsyncIteration
            await asyncio.sleep(0.01)
        line = self._lines[self._at]
        self._at += 1
        return line

    async def aclose(self) -> None:
        self._closed = True


class MemoryRuntime:
    """Containers as dictionary entries: create, start, stop and remove change state at once."""

    def __init__(self, images: tuple[str, ...] = ("moorage-test/busybox:latest",)) -> None:
        self.containers: dict[str, ContainerInfo] = {}
        #: What each container "wrote", line by line (tests append; a follower sees lines appended later).
        self.output: dict[str, list[bytes]] = {}
        self._images = list(images)

    async def ping(self) -> None:
        return None

    async def has_image(self, image: str) -> bool:
        return True

    async def images(self) -> list[str]:
        return list(self._images)

    async def ensure_image(self, image: str, policy: PullPolicy) -> None:
        # A name for tests that need a failed provisioning without Docker.
        if "/missing" in image:
            raise ImageNotFound(f"pull access denied for {image}: repository does not exist")

    async def create(self, spec: ContainerSpec) -> str:
        for info in self.containers.values():
            if info.instance_id == spec.instance_id:
                return info.container_id
        cid = f"fake{next(_ids):060d}"
        self.containers[cid] = ContainerInfo(
            container_id=cid,
            instance_id=spec.instance_id,
            node_id=spec.node_id,
            name=spec.name,
            image=spec.image,
            status=ContainerStatus.CREATED,
            exit_code=0,
            oom_killed=False,
            pid=0,
            started_at=0.0,
            restart_count=0,
            health="",
            labels={LABEL_INSTANCE: spec.instance_id},
        )
        return cid

    def _get(self, cid: str) -> ContainerInfo:
        if cid not in self.containers:
            raise ContainerNotFound(cid)
        return self.containers[cid]

    async def start(self, container_id: str) -> None:
        info = self._get(container_id)
        self.containers[container_id] = replace(info, status=ContainerStatus.RUNNING, started_at=time.time())

    async def stop(self, container_id: str, timeout_s: int) -> None:
        self.containers[container_id] = replace(self._get(container_id), status=ContainerStatus.EXITED)

    async def kill(self, container_id: str, signal: str = "SIGKILL") -> None:
        self.containers[container_id] = replace(
            self._get(container_id), status=ContainerStatus.EXITED, exit_code=137
        )

    async def remove(self, container_id: str) -> None:
        self.containers.pop(container_id, None)

    async def inspect(self, container_id: str) -> ContainerInfo:
        return self._get(container_id)

    async def list(self, node_id: str) -> list[ContainerInfo]:
        return list(self.containers.values())

    async def find(self, node_id: str, instance_id: str) -> ContainerInfo | None:
        return next((c for c in await self.list(node_id) if c.instance_id == instance_id), None)

    def logs(self, container_id: str, tail: int, follow: bool) -> MemoryLogs:
        self._get(container_id)
        lines = self.output.setdefault(container_id, [])
        return MemoryLogs(lines, tail, follow)

    def events(self, node_id: str) -> NoEvents:
        return NoEvents()

    async def close(self) -> None:
        return None
