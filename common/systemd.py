"""sd_notify without libsystemd: READY, STOPPING and the watchdog ping over $NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket


def notify(state: str) -> bool:
    """Send one notification; a no-op (False) when not started by systemd with Type=notify."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall(state.encode())
        except OSError:
            return False
    return True


def watchdog_interval() -> float | None:
    """Half the WatchdogSec systemd asked for (seconds), or None when no watchdog is armed for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    with contextlib.suppress(ValueError):
        return max(int(usec) / 1_000_000 / 2, 0.5)
    return None


async def watchdog_loop(healthy: asyncio.Event | None = None) -> None:
    """Ping the watchdog while the loop runs (and, if given, while ``healthy`` is set)."""
    interval = watchdog_interval()
    if interval is None:
        return
    while True:
        if healthy is None or healthy.is_set():
            notify("WATCHDOG=1")
        await asyncio.sleep(interval)
