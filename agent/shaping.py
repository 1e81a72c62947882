"""Bandwidth caps: a token bucket on the container's interface, set with tc inside the container's network
namespace (entered through /proc/<pid>/ns/net with nsenter; the agent's unit keeps CAP_NET_ADMIN and
CAP_SYS_ADMIN for exactly this). Egress (what the container sends: downloads from it) is shaped with tbf,
which queues to the rate; ingress (uploads to it) is policed, since a qdisc cannot queue what arrives.

A namespace is new with every container start, so the cap is set after each start."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable, Sequence

#: The interface Docker gives a container on its bridge network.
DEVICE = "eth0"

Shaper = Callable[[int, int], Awaitable[None]]


class ShapingError(Exception):
    """tc refused or is missing; the message is what to tell operators."""


def burst_bytes(mbps: int) -> int:
    """A bucket that holds ~20 ms at the rate, and never less than 32 KiB (tbf needs at least one
    timer tick's worth, or it cannot reach the rate)."""
    return max(32 * 1024, mbps * 1_000_000 // 8 // 50)


def commands(pid: int, mbps: int, device: str = DEVICE) -> list[list[str]]:
    """The tc calls (in the container's namespace) that set the cap; a leading "-" marks one whose failure
    is expected (removing what may not be there)."""
    enter = ["nsenter", f"--net=/proc/{pid}/ns/net", "tc"]
    burst = burst_bytes(mbps)
    return [
        [*enter, "qdisc", "replace", "dev", device, "root", "tbf", "rate", f"{mbps}mbit", "burst", str(burst),
         "latency", "50ms"],
        ["-", *enter, "qdisc", "del", "dev", device, "ingress"],
        [*enter, "qdisc", "add", "dev", device, "handle", "ffff:", "ingress"],
        [*enter, "filter", "add", "dev", device, "parent", "ffff:", "protocol", "all", "u32", "match", "u32",
         "0", "0", "police", "rate", f"{mbps}mbit", "burst", str(burst), "drop", "flowid", ":1"],
    ]  # fmt: skip


async def _run(argv: Sequence[str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    return proc.returncode or 0, err.decode(errors="replace").strip()


async def cap(pid: int, mbps: int) -> None:
    """Limit the container (by its process) to ``mbps`` each way. Raises ShapingError saying why not."""
    if pid <= 0:
        raise ShapingError("the container is not running")
    for tool in ("nsenter", "tc"):
        if shutil.which(tool) is None:
            raise ShapingError(f"{tool} is not installed on the host (packages util-linux, iproute2)")
    for argv in commands(pid, mbps):
        optional = argv[0] == "-"
        code, err = await _run(argv[1:] if optional else argv)
        if code != 0 and not optional:
            raise ShapingError(f"{' '.join(argv[3:6])}: {err or f'exit {code}'}")
