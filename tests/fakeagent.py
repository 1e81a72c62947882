"""Many agents in one process, each the real agent code (enrollment, mutual-TLS session, heartbeats,
reconcile) over an in-memory runtime. For tests and benchmarks that need Ready nodes in numbers, not
containers; the Docker path is proven by the tests that use the real agent.

    python -m tests.fakeagent AGENTS.json      # [{"data_dir", "coordinator", "enroll_address", "join_token"}]
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.files import FileStore
from agent.instances import InstanceManager
from agent.main import obtain_identity
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
from agent.session import AgentSession
from agent.shaping import ShapingError
from agent.telemetry import Telemetry

_ids = itertools.count(1)


class NoEvents:
    def __aiter__(self) -> AsyncIterator[ContainerEvent]:
        return self

    async def __anext__(self) -> ContainerEvent:
        await asyncio.Event().wait()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        return None


class MemoryRuntime:
    """Containers as dictionary entries: create, start, stop and remove change state at once."""

    def __init__(self, images: tuple[str, ...] = ("moorage-test/busybox:latest",)) -> None:
        self.containers: dict[str, ContainerInfo] = {}
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

    def events(self, node_id: str) -> NoEvents:
        return NoEvents()

    async def close(self) -> None:
        return None


async def accept_cap(netns: str, mbps: int) -> None:
    """In memory there is no interface to shape: a cap counts as set, up to what a 1 Gbit/s link could
    carry (above that the refusal shows how an agent reports a cap it cannot set)."""
    if mbps > 1000:
        raise ShapingError(f"the fake interface carries at most 1000 Mbps, not {mbps}")


async def run_one(spec: dict[str, Any]) -> None:
    config = AgentConfig.model_validate({"reconnect_initial_s": 0.2, "reconnect_max_s": 2.0, **spec})
    node = await obtain_identity(config)
    runtime = MemoryRuntime()
    manager = InstanceManager(
        runtime,
        node.node_id,
        PullPolicy.MISSING,
        emit=lambda _e: None,
        files=FileStore(config.data_dir / "files"),
        shaper=accept_cap,
    )
    session = AgentSession(config, node, runtime, manager, Telemetry(disk_path="/"))
    await session.run()


async def main(specs: list[dict[str, Any]]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(run_one(s)) for s in specs]
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for task in [waiter, *tasks]:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main(json.loads(Path(sys.argv[1]).read_text())))
