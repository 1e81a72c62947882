"""Bandwidth caps: a token bucket (tbf) each way on the container's veth pair. What the container sends
(downloads from it) is shaped on its own eth0, inside its network namespace, entered with nsenter through
the engine's handle on it (Docker's SandboxKey: unlike /proc/<pid>/ns/net it needs no ptrace rights over
the container, and a pid reused by a host process cannot send tc into the host's namespace). What it
receives (uploads to it) is shaped on the host's end of the pair, as that end's egress (no ingress
policing: it needs act_police, which kernels often lack). The agent's unit keeps CAP_NET_ADMIN and
CAP_SYS_ADMIN for exactly this.

A namespace and its veth pair are new with every container start, so the cap is set after each start."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Awaitable, Callable, Sequence

#: The interface Docker gives a container on its bridge network.
DEVICE = "eth0"

#: (the container's network namespace handle, Mbps)
Shaper = Callable[[str, int], Awaitable[None]]
#: How long one tc or ip call may take before the cap is given up (and reported).
CALL_TIMEOUT_S = 10.0


class ShapingError(Exception):
    """tc refused or is missing; the message is what to tell operators."""


def burst_bytes(mbps: int) -> int:
    """A bucket that holds ~20 ms at the rate, and never less than 32 KiB (tbf needs at least one
    timer tick's worth, or it cannot reach the rate)."""
    return max(32 * 1024, mbps * 1_000_000 // 8 // 50)


def tbf(device: str, mbps: int) -> list[str]:
    return ["tc", "qdisc", "replace", "dev", device, "root", "tbf", "rate", f"{mbps}mbit", "burst",
            str(burst_bytes(mbps)), "latency", "50ms"]  # fmt: skip


def peer_index(link_line: str) -> int:
    """The host-side interface index from ``ip -o link show eth0`` in the container ("5: eth0@if6: ...")."""
    match = re.match(r"\d+:\s*[^@:]+@if(\d+):", link_line)
    if match is None:
        raise ShapingError(f"cannot tell the container interface's host peer from {link_line[:80]!r}")
    return int(match.group(1))


def host_device(links: str, index: int) -> str:
    """The name of the host interface with that index, from ``ip -o link``."""
    for line in links.splitlines():
        match = re.match(r"(\d+):\s*([^@:]+)", line)
        if match and int(match.group(1)) == index:
            return match.group(2)
    raise ShapingError(f"no host interface with index {index} (the container's veth peer)")


async def _run(argv: Sequence[str]) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
    except OSError as exc:
        raise ShapingError(f"{argv[0]}: {exc.strerror}") from exc
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CALL_TIMEOUT_S)
    except (TimeoutError, asyncio.CancelledError) as exc:
        proc.kill()
        await proc.wait()  # no zombie left behind
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise ShapingError(f"{argv[0]} did not finish within {CALL_TIMEOUT_S:g} s") from exc
    if proc.returncode:
        what = " ".join(a for a in argv if not a.startswith("--net="))
        raise ShapingError(
            f"{what[:120]}: {err.decode(errors='replace').strip() or f'exit {proc.returncode}'}"
        )
    return out.decode(errors="replace")


async def cap(netns: str, mbps: int) -> None:
    """Limit the container (by its network namespace) to ``mbps`` each way. Raises ShapingError saying
    why not."""
    if not netns:
        raise ShapingError("the container has no network namespace (not running, or host networking)")
    for tool in ("nsenter", "tc", "ip"):
        if shutil.which(tool) is None:
            raise ShapingError(f"{tool} is not installed on the host (packages util-linux, iproute2)")
    inside = ["nsenter", f"--net={netns}"]
    await _run([*inside, *tbf(DEVICE, mbps)])
    peer = peer_index(await _run([*inside, "ip", "-o", "link", "show", DEVICE]))
    await _run(tbf(host_device(await _run(["ip", "-o", "link"]), peer), mbps))
