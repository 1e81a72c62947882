"""The agent's Prometheus text format and its server, over a real socket. What Prometheus itself makes of
a real agent's page (promtool) is tests/integration/test_agent_metrics.py."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from agent.exposition import Counter, Gauge, Histogram, MetricsServer, ProcessFigures, number, render
from tests.dockerenv import free_port


def test_families_render_as_prometheus_client_named_them() -> None:
    counter = Counter("c", "Things done.", ("kind",))
    counter.inc("a")
    counter.inc("a", by=2)
    counter.inc('q"uote\\back\nline')
    plain = Counter("p", "Plain.")
    gauge = Gauge("g", "A gauge.\\with a backslash", ("instance",))
    gauge.set(5, "x")
    gauge.set(7, "y")
    gauge.remove("y")
    histogram = Histogram("h", "Seconds.", ("call",), (0.1, 1.0))
    for seconds in (0.05, 0.5, 0.5, 3.0):
        histogram.observe(seconds, "list")
    read = Gauge("r", "Read at the scrape.", read=lambda: 2)
    assert render([counter, plain, gauge, histogram, read]).decode().splitlines() == [
        "# HELP c_total Things done.",
        "# TYPE c_total counter",
        'c_total{kind="a"} 3.0',
        'c_total{kind="q\\"uote\\\\back\\nline"} 1.0',
        "# HELP p_total Plain.",
        "# TYPE p_total counter",
        "p_total 0.0",
        "# HELP g A gauge.\\\\with a backslash",
        "# TYPE g gauge",
        'g{instance="x"} 5.0',
        "# HELP h Seconds.",
        "# TYPE h histogram",
        'h_bucket{call="list",le="0.1"} 1.0',
        'h_bucket{call="list",le="1.0"} 3.0',
        'h_bucket{call="list",le="+Inf"} 4.0',
        'h_count{call="list"} 4.0',
        'h_sum{call="list"} 4.05',
        "# HELP r Read at the scrape.",
        "# TYPE r gauge",
        "r 2.0",
    ]
    assert [number(v) for v in (float("inf"), float("-inf"), float("nan"), 3)] == [
        "+Inf",
        "-Inf",
        "NaN",
        "3.0",
    ]


def test_process_figures_are_this_process() -> None:
    figures = dict(line.split(" ") for line in ProcessFigures().lines() if not line.startswith("#"))
    with open("/proc/self/status", encoding="ascii") as status:
        rss_kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
    assert abs(float(figures["process_resident_memory_bytes"]) - rss_kib * 1024) < 16 * 2**20
    assert float(figures["process_open_fds"]) >= 3
    assert float(figures["process_cpu_seconds_total"]) > 0
    assert float(figures["process_max_fds"]) >= 1024
    assert 0 < time.time() - float(figures["process_start_time_seconds"]) < 3600


def test_the_server_answers_gets_and_stops() -> None:
    port = free_port()
    gauge = Gauge("moorage_x", "X.")
    server = MetricsServer([gauge], "127.0.0.1", port)
    try:
        gauge.set(4)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            assert response.read().decode().endswith("moorage_x 4.0\n")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/", data=b"x"), timeout=5)
        assert refused.value.code == 405
        refused.value.close()
        # A client that connects and says nothing holds the page from the next one for two seconds at most.
        with (
            socket.create_connection(("127.0.0.1", port)),
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response,
        ):
            assert response.status == 200
    finally:
        server.close()
    assert "metrics" not in {t.name for t in threading.enumerate()}
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1)


def test_a_taken_port_is_an_os_error() -> None:
    port = free_port()
    first = MetricsServer([], "127.0.0.1", port)
    try:
        with pytest.raises(OSError):
            MetricsServer([], "127.0.0.1", port)
    finally:
        first.close()
