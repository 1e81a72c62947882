"""Prometheus' text format (0.0.4) and the small HTTP server that hands it out, for the agent's few figures.

prometheus_client brought ~4 MiB and seventy modules into an agent that lives on every host for months (its
HTTP server alone pulls http.server, email and urllib); the agent needs counters, gauges and histograms
with labels, the process figures and one GET. The coordinator keeps prometheus_client.

Every update happens on the agent's event loop; the server reads from a thread of its own, so a scrape never
waits on the loop. A scrape copies each family's samples before it formats them (a copy of a dict is one
step under the GIL), so an update during a scrape cannot break it.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[str, ...]


def number(value: float) -> str:
    """As Prometheus writes a float: +Inf, -Inf, NaN, integers with their .0."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _series(name: str, names: Labels, values: Labels, extra: str = "") -> str:
    pairs = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        pairs.append(extra)
    return f"{name}{{{','.join(pairs)}}}" if pairs else name


class Family:
    """One metric name with its help, type and a sample per label-value tuple."""

    kind = "untyped"

    def __init__(self, name: str, help_text: str, labels: Labels = ()) -> None:
        self.name, self.help, self.labels = name, help_text, labels

    def head(self) -> Iterator[str]:
        name = self.name + "_total" if self.kind == "counter" else self.name  # as prometheus_client does
        yield f"# HELP {name} {self.help.replace(chr(92), chr(92) * 2).replace(chr(10), chr(92) + 'n')}"
        yield f"# TYPE {name} {self.kind}"

    def lines(self) -> Iterator[str]:
        raise NotImplementedError


class Gauge(Family):
    kind = "gauge"

    def __init__(
        self, name: str, help_text: str, labels: Labels = (), read: Callable[[], float] | None = None
    ) -> None:
        """``read``: the value is asked for at each scrape (from the server's thread)."""
        super().__init__(name, help_text, labels)
        self.values: dict[Labels, float] = {} if labels or read else {(): 0.0}
        self._read = read

    def set(self, value: float, *labels: str) -> None:
        self.values[labels] = float(value)

    def remove(self, *labels: str) -> None:
        self.values.pop(labels, None)

    def lines(self) -> Iterator[str]:
        if self._read is not None:
            yield f"{self.name} {number(self._read())}"
            return
        for labels, value in sorted(self.values.copy().items()):
            yield f"{_series(self.name, self.labels, labels)} {number(value)}"


class Counter(Family):
    """Exposed as ``<name>_total``, as prometheus_client names counters."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Labels = ()) -> None:
        super().__init__(name, help_text, labels)
        self.values: dict[Labels, float] = {} if labels else {(): 0.0}

    def inc(self, *labels: str, by: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + by

    def lines(self) -> Iterator[str]:
        for labels, value in sorted(self.values.copy().items()):
            yield f"{_series(self.name + '_total', self.labels, labels)} {number(value)}"


class Histogram(Family):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, labels: Labels, buckets: tuple[float, ...]) -> None:
        super().__init__(name, help_text, labels)
        self.bounds = (*sorted(buckets), math.inf)
        #: Per label values: a count per bucket (not cumulative), then the sum.
        self.values: dict[Labels, list[float]] = {}

    def observe(self, value: float, *labels: str) -> None:
        counts = self.values.get(labels)
        if counts is None:
            counts = self.values[labels] = [0.0] * (len(self.bounds) + 1)
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                counts[i] += 1
                break
        counts[-1] += value

    def lines(self) -> Iterator[str]:
        for labels, counts in sorted(self.values.copy().items()):
            counts = list(counts)
            total = 0.0
            for bound, count in zip(self.bounds, counts, strict=False):
                total += count
                le = f'le="{number(bound)}"'
                yield f"{_series(self.name + '_bucket', self.labels, labels, le)} {number(total)}"
            yield f"{_series(self.name + '_count', self.labels, labels)} {number(total)}"
            yield f"{_series(self.name + '_sum', self.labels, labels)} {number(counts[-1])}"


class ProcessFigures(Family):
    """What prometheus_client's process collector serves (Linux /proc), under the same names."""

    def __init__(self) -> None:
        super().__init__("process", "")
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._boot: float | None = None  # read at the first scrape: an agent not serving reads nothing

    def _booted(self) -> float:
        if self._boot is None:
            with open("/proc/stat", encoding="ascii") as stat:
                self._boot = next(float(line.split()[1]) for line in stat if line.startswith("btime"))
        return self._boot

    def head(self) -> Iterator[str]:
        return iter(())

    def lines(self) -> Iterator[str]:
        with open("/proc/self/stat", encoding="ascii") as stat:
            fields = stat.read().rpartition(")")[2].split()
        utime, stime, start, vsize, rss = (float(fields[i]) for i in (11, 12, 19, 20, 21))
        for name, kind, help_text, value in (
            ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", vsize),
            ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", rss * self._page),
            (
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
                self._booted() + start / self._ticks,
            ),
            (
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
                (utime + stime) / self._ticks,
            ),
            (
                "process_open_fds",
                "gauge",
                "Number of open file descriptors.",
                len(os.listdir("/proc/self/fd")),
            ),
            (
                "process_max_fds",
                "gauge",
                "Maximum number of open file descriptors.",
                resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            ),
        ):
            yield f"# HELP {name} {help_text}"
            yield f"# TYPE {name} {kind}"
            yield f"{name} {number(value)}"


def python_info() -> Gauge:
    major, minor, patch = platform.python_version_tuple()
    names = ("implementation", "major", "minor", "patchlevel", "version")
    info = Gauge("python_info", "Python platform information", names)
    info.set(1, platform.python_implementation(), major, minor, patch, platform.python_version())
    return info


def render(families: list[Family]) -> bytes:
    out: list[str] = []
    for family in families:
        out.extend(family.head())
        out.extend(family.lines())
    return ("\n".join(out) + "\n").encode()


class MetricsServer:
    """GET (any path) answers the families in text format; one connection at a time, closed after, and a
    client that says nothing is dropped after two seconds (the address is local; a scraper asks once in a
    while)."""

    def __init__(self, families: list[Family], host: str, port: int) -> None:
        self._families = families
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.bind((host, port))
            self._socket.listen(16)
        except OSError:
            self._socket.close()
            raise
        self._thread = threading.Thread(target=self._serve, name="metrics", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return  # closed
            with connection:
                try:
                    self._answer(connection)
                except Exception:  # one bad scrape (or figure) must not end the server
                    continue

    def _answer(self, connection: socket.socket) -> None:
        connection.settimeout(2.0)
        request = b""
        while b"\r\n\r\n" not in request and len(request) < 8192:
            data = connection.recv(4096)
            if not data:
                return
            request += data
        method = request.split(b" ", 1)[0]
        if method not in (b"GET", b"HEAD"):
            connection.sendall(
                b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            return
        body = render(self._families)
        head = (
            f"HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {len(body)}\r\n"
            f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime())}\r\nConnection: close\r\n\r\n"
        )
        connection.sendall(head.encode() + (body if method == b"GET" else b""))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)  # wakes the accept
        self._socket.close()
        self._thread.join(5.0)
