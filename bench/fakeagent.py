"""Many agents in one process, each the real agent code (enrollment, mutual-TLS session, heartbeats,
reconcile) over an in-memory runtime. For tests and benchmarks that need Ready nodes in numbers, not
containers; the Docker path is proven by the tests that use the real agent.

    python -m bench.fakeagent AGENTS.json      # [{"data_dir", "coordinator", "enroll_address", "join_token"}]
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.main import assemble, obtain_identity
from agent.runtime.memory import MemoryRuntime
from agent.shaping import ShapingError
from common.config import build


async def accept_cap(netns: str, mbps: int) -> None:
    """In memory there is no interface to shape: a cap counts as set, up to what a 1 Gbit/s link could
    carry (above that the refusal shows how an agent reports a cap it cannot set)."""
    if mbps > 1000:
        raise ShapingError(f"the fake interface carries at most 1000 Mbps, not {mbps}")


async def run_one(spec: dict[str, Any]) -> None:
    config = build(AgentConfig, {"reconnect_initial_s": 0.2, "reconnect_max_s": 2.0, **spec})
    node = await obtain_identity(config)
    runtime = MemoryRuntime()
    _, session = assemble(config, node, runtime, shaper=accept_cap, disk_path="/")
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
