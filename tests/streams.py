"""A Server-Sent Events reader for tests: a plain HTTP connection, as an EventSource holds, closed at once
as a tab closes."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import urllib.parse
from collections.abc import Iterator


def sse_lines(url: str, headers: dict[str, str], got: list[str], stop: threading.Event) -> None:
    """Follow a log stream on this thread until ``stop``; each line it carries into ``got`` (an answer
    other than 200 goes there as "status N")."""
    where = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname or "", where.port, timeout=30)
    conn.request("GET", f"{where.path}?{where.query}", headers={"Accept": "text/event-stream", **headers})
    response = conn.getresponse()
    if response.status != 200:
        got.append(f"status {response.status}")
        conn.close()
        return

    def read() -> None:
        with contextlib.suppress(Exception):
            while line := response.readline().decode():
                if line.startswith("data: "):
                    got.extend(json.loads(line[6:]).get("lines", []))

    threading.Thread(target=read, daemon=True).start()
    stop.wait()
    with contextlib.suppress(OSError):
        if conn.sock is not None:
            conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()


@contextlib.contextmanager
def following(url: str, headers: dict[str, str]) -> Iterator[list[str]]:
    """Follow a log stream on a thread of its own while the body runs; the lines so far, growing."""
    got: list[str] = []
    stop = threading.Event()
    follower = threading.Thread(target=sse_lines, args=(url, headers, got, stop))
    follower.start()
    try:
        yield got
    finally:
        stop.set()
        follower.join(10)
