"""Heartbeat ingestion: simulated agents (real gRPC sessions over loopback with mutual TLS, each its own
node certificate, spread over several processes; the agent's own channel options and its heartbeat
shaping, partial between full ones) against one real coordinator process.

The nodes are written into the coordinator's database and their certificates signed with its CA before it
starts (enrolling 10,000 agents one by one would measure enrollment, not heartbeats). Each node reports two
running instances with growing byte counters, so every heartbeat also feeds the bandwidth totals and the
batch writer. Printed: the coordinator's RSS and CPU with 1,000 and with 10,000 sessions at a 5 s
interval, the p99 heartbeat delay and batch write there; heartbeats per core-second at saturation and the
p99 handling time; and beside each, the same sessions against the ceiling, a grpc.aio server with the
coordinator's transport options that does nothing per heartbeat, measured in the same run. Timings come
from the coordinator's own /metrics histograms. bench/heartbeats_cluster.py spreads 20,000 over several.

    python -m bench.heartbeats                     # the whole benchmark
    python -m bench.heartbeats flood 1000          # only the saturation phase, with that many sessions
    python -m bench.heartbeats generate SPEC.json  # one load-generating process (the benchmark starts them)
    python -m bench.heartbeats bare DATA_DIR [PORT]  # the do-nothing server (the benchmark starts it)
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import random
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psutil
from sqlalchemy import text

from agent.heartbeat import HeartbeatDiff
from agent.identity import SERVER_NAME, new_key_and_csr
from agent.session import CHANNEL_OPTIONS, PROTOCOL_VERSION
from bench.daemons import REPO, CoordinatorProcess, wait_for
from bench.seed import organization_with_user
from coordinator.config import FleetOptions
from coordinator.domain.records import Instance, InstanceState, Node
from coordinator.gateway.servicer import SERVER_OPTIONS
from coordinator.security.pki import CertificateAuthority
from coordinator.store import nodes as nodes_store
from coordinator.store.engine import Store, sqlite_url
from coordinator.store.instances import INSERT_INSTANCE, instance_params
from protos import moorage_pb2 as pb
from protos import moorage_pb2_grpc as pb_grpc

GENERATORS = 4
INSTANCES_PER_NODE = 2
SETTLE_S = 12.0
FLOOD_S = 10.0
CONNECTING = 32
#: The heartbeat interval of the steady phases (and of every session before a flood begins).
STEADY_S = 5.0
#: The coordinators' fleet options: the defaults but for seeded nodes not yet connected, which are not
#: judged silent meanwhile (a real fleet's agents all come).
FLEET = {
    "heartbeat_interval_s": STEADY_S,
    "offline_after_s": 300.0,
    "batch_period_s": 1.0,
    "startup_grace_s": 900.0,
    "full_report_every": FleetOptions().full_report_every,
}


# ---------------------------------------------------------------- setup


async def _seed(data_dir: Path, count: int) -> dict[str, Any]:
    """Enrolled nodes with running instances, straight into the data directory's database, with its CA."""
    return await seed(Store.open(sqlite_url(data_dir)), CertificateAuthority.load_or_create(data_dir), count)


async def seed(store: Store, ca: CertificateAuthority, count: int) -> dict[str, Any]:
    """Enrolled nodes with running instances, straight into the database (closed after); one key for every
    node (only the certificates must differ: each names its node)."""
    key_pem, csr_pem = new_key_and_csr()
    now = time.time()
    nodes: list[dict[str, Any]] = []
    async with store.write() as conn:
        org = await organization_with_user(conn, "bench", admin=False, now=now)
        for n in range(count):
            node_id = str(uuid.uuid4())
            issued = ca.sign_node(csr_pem, node_id, dt.timedelta(days=1))
            node = Node(node_id, f"n{n}", "127.0.0.1", 8080, None, [], 65536, 65536, 32, 0, False, True, now)
            await nodes_store.insert_node(conn, node)
            await nodes_store.mark_enrolled(
                conn, node_id, cert_serial=issued.serial, agent_version="b", now=now
            )
            instance_ids = [str(uuid.uuid4()) for _ in range(INSTANCES_PER_NODE)]
            for iid in instance_ids:
                inst = Instance(
                    iid, "i", org, "bench", "img", "img", 64, 10, 0, {}, node_id, None,
                    InstanceState.RUNNING, None, False, f"c{iid}", now, now, now, now, None,
                )  # fmt: skip
                await conn.execute(text(INSERT_INSTANCE), instance_params(inst))
            nodes.append({"id": node_id, "cert": issued.pem.decode(), "instances": instance_ids})
    await store.close()
    ca_pem = ca.cert_pem.decode()
    return {"key": key_pem.decode(), "ca": ca_pem, "nodes": nodes}


# ---------------------------------------------------------------- one generator process


def _statuses(instances: list[str], tick: int, first_down: bool = False) -> list[pb.InstanceStatus]:
    """``first_down``: the first instance's container has exited (the event benchmark's state changes)."""
    return [
        pb.InstanceStatus(
            instance_id=iid,
            container_id=f"c{iid}",
            state=pb.CONTAINER_STATE_EXITED if first_down and n == 0 else pb.CONTAINER_STATE_RUNNING,
            exit_code=1 if first_down and n == 0 else 0,
            started_at_ms=1,
            rx_bytes=1000 * tick,
            tx_bytes=5000 * tick,
            rx_mbps=0.01,
            tx_mbps=0.05,
        )
        for n, iid in enumerate(instances)
    ]


async def _session(
    spec: dict[str, Any],
    node: dict[str, Any],
    connecting: asyncio.Semaphore,
    ready: asyncio.Semaphore,
    go: asyncio.Event,
) -> None:
    creds = grpc.ssl_channel_credentials(spec["ca"].encode(), spec["key"].encode(), node["cert"].encode())
    # The agent's own channel (keepalive pings included) and its heartbeats: partial between full ones as
    # the Welcome says, shaped by the agent's code as they leave.
    async with grpc.aio.secure_channel(spec["target"], creds, options=CHANNEL_OPTIONS) as channel:
        async with connecting:
            call = pb_grpc.CoordinatorStub(channel).Connect()
            # As a real agent does, the Hello carries what runs (the coordinator confirms it from there).
            hello = pb.Hello(
                agent_version="bench",
                protocol_version=PROTOCOL_VERSION,
                instances=_statuses(node["instances"], 0),
            )
            await call.write(pb.AgentMessage(hello=hello))
            welcome = await call.read()
        assert isinstance(welcome, pb.CoordinatorMessage)
        every = welcome.welcome.full_report_every
        beats = HeartbeatDiff(every, hello.instances, phase=random.randrange(every) if every else 0)
        ready.release()

        async def drain() -> None:
            while isinstance(message := await call.read(), pb.CoordinatorMessage):
                if message.HasField("report"):
                    beats.ask_full()

        drainer = asyncio.create_task(drain())
        host = pb.HostMetrics(cpu_percent=3.5, memory_used_mib=900, memory_total_mib=65536, load1=0.2)
        # Every flip_every beats the first instance's container goes down or comes back (bench/events.py).
        flip = int(spec.get("flip_every", 0))
        tick = random.randrange(flip) if flip else 0  # the nodes' changes spread over the period
        # As a real agent, from its Welcome on at the usual interval: a node that fell silent while the
        # others connected would be judged abnormal (its instances unhealthy) and the measured window would
        # be the fleet recovering. The benchmark's own interval (a flood: 0) starts once every generator's
        # sessions are up, so a flood does not starve the handshakes.
        interval = STEADY_S
        flood_later = spec["interval"] != STEADY_S  # which begins the moment it is told
        pause: float | None = random.uniform(0, interval)
        while True:
            if pause is not None and flood_later and not go.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(go.wait(), pause)
            elif pause is not None:
                await asyncio.sleep(pause)
            if go.is_set():
                interval = spec["interval"]
            tick += 1
            beat = pb.Heartbeat(
                seq=tick,
                sent_at_ms=int(time.time() * 1000),
                host=host,
                instances=_statuses(node["instances"], tick, bool(flip) and (tick // flip) % 2 == 1),
            )
            await call.write(pb.AgentMessage(heartbeat=beats.shape(beat)))
            pause = interval * random.uniform(0.9, 1.1) if interval > 0 else _flood_pause(tick)
        drainer.cancel()


def _flood_pause(tick: int) -> float | None:
    """A flood writes beat after beat, but every 50th lets every other session have its turn."""
    return 0.0 if tick % 50 == 0 else None


async def _generate(spec: dict[str, Any]) -> None:
    ready = asyncio.Semaphore(0)
    go = asyncio.Event()
    # Handshakes in flight at once: a real fleet reconnects with jitter, not in one SYN flood (past the
    # listen backlog, connects are dropped and retried seconds later).
    connecting = asyncio.Semaphore(CONNECTING)
    tasks = [asyncio.create_task(_session(spec, node, connecting, ready, go)) for node in spec["nodes"]]
    for _ in spec["nodes"]:
        await ready.acquire()
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # the benchmark says go once every generator is ready
    go.set()
    await asyncio.gather(*tasks)


# ---------------------------------------------------------------- the ceiling


class _Bare(pb_grpc.CoordinatorServicer):
    """The same sessions (mutual TLS, Hello, Welcome) with nothing done per heartbeat: what grpc.aio itself
    costs here, the ceiling any handling sits under."""

    def __init__(self) -> None:
        self.count = 0

    async def Enroll(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the ceiling server does not enroll")

    async def Connect(self, request_iterator: Any, context: Any) -> None:  # type: ignore[override]
        await context.read()
        # The coordinator's own Welcome fields, so that the agents send the same heartbeats to both.
        welcome = pb.Welcome(full_report_every=FleetOptions().full_report_every)
        await context.write(pb.CoordinatorMessage(welcome=welcome))
        while (await context.read()) is not grpc.aio.EOF:
            self.count += 1


async def _bare_server(data_dir: Path, port: int = 0, servicer: _Bare | None = None) -> None:
    """Serve until stdin closes; each "measure S" line answers "heartbeats/s cores" over S seconds. Given a
    port, it shares it with the servers already there (grpc listens with SO_REUSEPORT). ``servicer``: one
    that does something per heartbeat (bench.heartbeats_ceilings), counting as _Bare does."""
    ca = CertificateAuthority.load_or_create(data_dir)
    key, chain = ca.server_credentials([SERVER_NAME])
    creds = grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=ca.cert_pem, require_client_auth=True
    )
    servicer = servicer or _Bare()
    server = grpc.aio.server(options=SERVER_OPTIONS)  # the coordinator's transport, as it is configured
    pb_grpc.add_CoordinatorServicer_to_server(servicer, server)
    port = server.add_secure_port(f"127.0.0.1:{port}", creds)
    await server.start()
    print(port, flush=True)
    me = psutil.Process()
    while line := await asyncio.to_thread(sys.stdin.readline):
        seconds = float(line.split()[1])
        cpu, at, count = sum(me.cpu_times()[:2]), time.monotonic(), servicer.count
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - at
        rate, cores = (servicer.count - count) / elapsed, (sum(me.cpu_times()[:2]) - cpu) / elapsed
        print(f"{rate} {cores}", flush=True)
    await server.stop(None)


def start_server(command: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    """A do-nothing server process (``python -m`` command) and the port it says it listens on."""
    server = subprocess.Popen(
        [sys.executable, "-m", *command], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert server.stdout is not None
    return server, int(server.stdout.readline())


def measure_servers(
    servers: list[subprocess.Popen[bytes]],
    port: int,
    seeded: dict[str, Any],
    count: int,
    interval: float,
    tmp: Path,
) -> Phase:
    """The same sessions, sending the same heartbeats, against do-nothing servers sharing one port: their
    rates, cores and RSS summed over the same stretch. The servers are killed after."""
    try:
        spec = {"target": f"127.0.0.1:{port}", "key": seeded["key"], "ca": seeded["ca"], "interval": interval}
        procs = start_generators(spec, seeded["nodes"][:count], tmp)
        try:
            time.sleep(SETTLE_S / 2 if interval else 2.0)
            for server in servers:
                assert server.stdin is not None
                server.stdin.write(f"measure {SETTLE_S if interval else FLOOD_S}\n".encode())
                server.stdin.flush()
            total = Phase(0.0, 0.0, 0.0)
            for server in servers:
                assert server.stdout is not None
                rate, cores = map(float, server.stdout.readline().split())
                total.rate, total.cores = total.rate + rate, total.cores + cores
                total.rss_mib += psutil.Process(server.pid).memory_info().rss / 2**20
            return total
        finally:
            stop_generators(procs)
    finally:
        for server in servers:
            server.kill()
            server.wait()


def _ceiling(data_dir: Path, seeded: dict[str, Any], count: int, interval: float, tmp: Path) -> Phase:
    """The same sessions, sending the same heartbeats, against the do-nothing server."""
    bare, port = start_server(["bench.heartbeats", "bare", str(data_dir)])
    return measure_servers([bare], port, seeded, count, interval, tmp)


# ---------------------------------------------------------------- measuring


def scrape(coordinator: CoordinatorProcess) -> dict[str, float]:
    req = urllib.request.Request(coordinator.endpoints["http"] + "/metrics")
    req.add_header("x-api-key", coordinator.admin_key)
    with urllib.request.urlopen(req, timeout=30) as resp:
        text = resp.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^(moorage_[a-z_]+(?:\{[^}]*\})?) ([0-9.e+-]+)$", line)
        if m:
            values[m.group(1)] = float(m.group(2))
    return values


def _p99(before: dict[str, float], after: dict[str, float], name: str) -> str:
    """The bucket bound under which 99% of the window's observations fall."""
    total = after[f"{name}_count"] - before.get(f"{name}_count", 0.0)
    if total <= 0:
        return "n/a"
    buckets = sorted(
        (float(m.group(1)), after[k] - before.get(k, 0.0))
        for k in after
        if (m := re.match(rf'^{name}_bucket\{{le="([0-9.e+-]+)"\}}$', k))
    )
    for bound, count in buckets:
        if count >= 0.99 * total:
            return f"≤ {bound * 1000:g} ms"
    return "> 2.5 s"


def start_generators(
    spec: dict[str, Any], nodes: list[dict[str, Any]], tmp: Path, generators: int = GENERATORS
) -> list[subprocess.Popen[bytes]]:
    procs = []
    for g in range(generators):
        path = tmp / f"gen-{g}-{uuid.uuid4().hex[:6]}.json"
        path.write_text(json.dumps({**spec, "nodes": nodes[g::generators]}))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "bench.heartbeats", "generate", str(path)],
                cwd=REPO,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        )
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError("a load generator did not get its sessions up")
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
    return procs


def stop_generators(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.kill()
        proc.wait()


@dataclass
class Phase:
    """One measured stretch of one server process: heartbeats a second, its CPU in cores, its RSS."""

    rate: float
    cores: float
    rss_mib: float

    @property
    def per_core_s(self) -> float:
        return self.rate / max(self.cores, 1e-9)


@dataclass
class Window(Phase):
    """The coordinator's stretch, with its own metrics before and after (for the p99s)."""

    before: dict[str, float]
    after: dict[str, float]

    def p99(self, name: str) -> str:
        return _p99(self.before, self.after, name)


def _measure(coordinator: CoordinatorProcess, seconds: float) -> Window:
    return measure_together([coordinator], seconds)[0]


def measure_together(coordinators: list[CoordinatorProcess], seconds: float) -> list[Window]:
    """The same stretch of time for each coordinator."""
    procs = [psutil.Process(c.proc.pid) for c in coordinators]  # type: ignore[union-attr]
    before, cpu0, t0 = [scrape(c) for c in coordinators], [p.cpu_times() for p in procs], time.monotonic()
    time.sleep(seconds)
    after, cpu1 = [scrape(c) for c in coordinators], [p.cpu_times() for p in procs]
    elapsed = time.monotonic() - t0
    windows = []
    for b, a, c0, c1, proc in zip(before, after, cpu0, cpu1, procs, strict=True):
        cores = (c1.user + c1.system - c0.user - c0.system) / elapsed
        rate = (a["moorage_heartbeats_total"] - b["moorage_heartbeats_total"]) / elapsed
        windows.append(Window(rate, cores, proc.memory_info().rss / 2**20, b, a))
    return windows


def spec_for(coordinator: CoordinatorProcess, seeded: dict[str, Any], interval: float) -> dict[str, Any]:
    target = f"127.0.0.1:{coordinator.endpoints['grpc_port']}"
    return {"target": target, "key": seeded["key"], "ca": seeded["ca"], "interval": interval}


def quiet(coordinator: CoordinatorProcess, timeout_s: float = 600.0) -> None:
    """Until no event has been written for a few seconds: the fleet has settled. Nodes seeded but not in
    this phase are judged silent when the startup grace runs out, their instances turn unhealthy, and each
    heartbeat of theirs later confirms them again, a write an instance: the steady state is what comes
    after, not that recovery."""
    deadline, last, still = time.monotonic() + timeout_s, -1, 0
    while time.monotonic() < deadline:
        newest = int(coordinator.query("SELECT COALESCE(MAX(id), 0) FROM events")[0][0])
        still = still + 1 if newest == last else 0
        if still >= 2:
            return
        last = newest
        time.sleep(2.0)
    raise TimeoutError("the fleet did not settle")


def _steady(coordinator: CoordinatorProcess, seeded: dict[str, Any], count: int, tmp: Path) -> Window:
    started = time.monotonic()
    procs = start_generators(spec_for(coordinator, seeded, STEADY_S), seeded["nodes"][:count], tmp)
    connect_s = time.monotonic() - started
    try:
        wait_for(lambda: scrape(coordinator).get("moorage_agent_sessions") == count, 60, f"{count} sessions")
        quiet(coordinator)
        time.sleep(SETTLE_S / 2)
        w = _measure(coordinator, SETTLE_S)
        beats = w.after["moorage_heartbeats_total"] - w.before["moorage_heartbeats_total"]
        partial = w.after["moorage_heartbeats_partial_total"] - w.before["moorage_heartbeats_partial_total"]
        print(
            f"{count:>6} sessions at {STEADY_S:g} s, coordinator: RSS {w.rss_mib:5.0f} MiB   "
            f"{w.rate:5.0f} heartbeats/s ({partial / max(beats, 1):.0%} partial) on "
            f"{w.cores:.2f} cores   p99 delay {w.p99('moorage_heartbeat_delay_seconds')}   "
            f"p99 batch write {w.p99('moorage_batch_write_seconds')}   (sessions up in {connect_s:.0f} s)",
            flush=True,
        )
        return w
    finally:
        stop_generators(procs)


def _flood(coordinator: CoordinatorProcess, seeded: dict[str, Any], count: int, tmp: Path) -> Window:
    """Nodes of their own (the last seeded), once the nodes of the steady phases were judged silent: a
    window in which the coordinator does nothing but take heartbeats."""
    procs = start_generators(spec_for(coordinator, seeded, 0.0), seeded["nodes"][-count:], tmp)
    try:
        time.sleep(2.0)
        w = _measure(coordinator, FLOOD_S)
        print(
            f"saturation, {count} sessions flooding, coordinator: {w.rate:6.0f} heartbeats/s on "
            f"{w.cores:.2f} cores = {w.per_core_s:6.0f} per core-second   "
            f"p99 handling {w.p99('moorage_heartbeat_handling_seconds')}   "
            f"p99 batch write {w.p99('moorage_batch_write_seconds')}",
            flush=True,
        )
        return w
    finally:
        stop_generators(procs)


def _report(
    sizes: tuple[int, ...], ours: dict[int, Window], bare: dict[int, Phase], flood: tuple[Window, Phase]
) -> None:
    """Each figure beside the ceiling's, measured in the same run, and the goals (issue 21)."""
    print("\nbeside the ceiling (a grpc.aio server doing nothing per heartbeat, same transport options):")
    for count in sizes:
        w, c = ours[count], bare[count]
        print(
            f"{count:>6} at {STEADY_S:g} s: RSS {w.rss_mib:5.0f} MiB (ceiling {c.rss_mib:5.0f})   "
            f"CPU {w.cores:.2f} cores (ceiling {c.cores:.2f})   "
            f"p99 delay {w.p99('moorage_heartbeat_delay_seconds')}"
        )
    if len(sizes) > 1:
        low, high = sizes[0], sizes[-1]
        mine = (ours[high].rss_mib - ours[low].rss_mib) * 1024 / (high - low)
        theirs = (bare[high].rss_mib - bare[low].rss_mib) * 1024 / (high - low)
        print(f"memory a session ({low:,} -> {high:,}): {mine:.0f} KB (ceiling {theirs:.0f} KB)")
    w, c = flood
    print(
        f"saturation: {w.per_core_s:6.0f} per core-second (ceiling {c.per_core_s:6.0f}) = "
        f"{w.per_core_s / max(c.per_core_s, 1e-9):.0%} of the ceiling   "
        f"p99 handling {w.p99('moorage_heartbeat_handling_seconds')}"
    )
    print(
        "goals: 10,000 at 5 s in RSS <= 600 MiB on <= 0.3 cores, p99 delay <= 20 ms; saturation >= 70% of "
        "the ceiling, p99 handling <= 20 ms"
    )


def main(sizes: tuple[int, ...] = (1_000, 10_000), steady: bool = True) -> None:
    print(f"heartbeats: {GENERATORS} load generators, {INSTANCES_PER_NODE} instances a node, mutual TLS")
    with tempfile.TemporaryDirectory() as raw:
        tmp = Path(raw)
        data_dir = tmp / "coordinator"
        data_dir.mkdir()
        coordinator = CoordinatorProcess(data_dir, fleet=FLEET, extra={"log_level": "warning"})
        coordinator.start()  # once, to create its database, CA and admin key; then the fleet is seeded
        coordinator.stop()
        steady_nodes = max(sizes) if steady else 0
        seeded = asyncio.run(_seed(data_dir, steady_nodes + sizes[0]))
        coordinator.start()
        ours: dict[int, Window] = {}
        try:
            # The flood comes last: it leaves the coordinator holding transport buffers, which would
            # count in the RSS of a later phase. The nodes of the steady phases are judged silent first
            # (their instances turn unhealthy: a write each), not while the flood is measured.
            for count in sizes if steady else ():
                ours[count] = _steady(coordinator, seeded, count, tmp)
            if steady:
                time.sleep(FleetOptions(**FLEET).grace_intervals * STEADY_S)
                quiet(coordinator)
            flood = _flood(coordinator, seeded, sizes[0], tmp)
        finally:
            coordinator.stop()
        bare = {count: _ceiling(data_dir, seeded, count, STEADY_S, tmp) for count in ours}
        _report(tuple(ours), ours, bare, (flood, _ceiling(data_dir, seeded, sizes[0], 0.0, tmp)))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "generate":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_generate(json.loads(Path(sys.argv[2]).read_text())))
    elif len(sys.argv) in (3, 4) and sys.argv[1] == "bare":
        asyncio.run(_bare_server(Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) == 4 else 0))
    elif len(sys.argv) == 3 and sys.argv[1] == "flood":
        main((int(sys.argv[2]),), steady=False)  # only the saturation phase, for profiling
    else:
        main()
