"""The gateway designs issue 21 names, measured as ceilings: the same simulated agents as bench.heartbeats
(mutual TLS, the agent's channel and heartbeat shaping) against servers that do nothing per heartbeat.

- ``aio``: one grpc.aio process, the coordinator's transport as configured (bench.heartbeats' ceiling).
- ``sync``: grpc's synchronous server in one process; a stream holds a worker thread for its whole life,
  so the pool has a thread per session.
- ``2 aio``: two grpc.aio processes sharing the port (SO_REUSEPORT; the kernel spreads the connections):
  the least a second gateway process costs, before any hand-off between it and the core.
- ``work``: the ``aio`` server doing, per heartbeat, the coordinator's in-memory handling and nothing
  else: the beat translated to the domain, liveness and bandwidth recorded in a real Fleet, the heartbeat
  metrics observed, the vanished check (no database, no session worker). What that work alone leaves of
  the ceiling, which bench.heartbeats' saturation goal (70 %) measures the whole coordinator against.

Each at a 5 s interval and flooding; the figures are summed over a variant's processes.

    python -m bench.heartbeats_ceilings [COUNT ...]          # default 1000 3000
    python -m bench.heartbeats_ceilings sync DATA_DIR COUNT  # the synchronous server (started by the above)
    python -m bench.heartbeats_ceilings work DATA_DIR        # the working aio server (started by the above)
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import psutil

from agent.identity import SERVER_NAME
from bench.daemons import CoordinatorProcess
from bench.heartbeats import FLEET, STEADY_S, Phase, _Bare, _bare_server, _seed, measure_servers, start_server
from coordinator.config import FleetOptions
from coordinator.fleet.live import Fleet
from coordinator.gateway import translate
from coordinator.gateway.servicer import SERVER_OPTIONS
from coordinator.metrics import HeartbeatStats
from coordinator.security.pki import CertificateAuthority, node_id_from_certificate
from protos import moorage_pb2 as pb
from protos import moorage_pb2_grpc as pb_grpc


class _SyncBare(pb_grpc.CoordinatorServicer):
    """bench.heartbeats' do-nothing servicer on grpc's synchronous server."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def Enroll(self, request: Any, context: Any) -> Any:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "the ceiling server does not enroll")

    def Connect(self, request_iterator: Any, context: Any) -> Iterator[pb.CoordinatorMessage]:
        next(request_iterator, None)
        yield pb.CoordinatorMessage(welcome=pb.Welcome(full_report_every=FleetOptions().full_report_every))
        for _ in request_iterator:
            with self._lock:
                self.count += 1


class _Working(_Bare):
    """The do-nothing servicer plus the coordinator's in-memory work per heartbeat, as Gateway._read and
    AgentReports do it (the Hello's statuses recorded first, as the coordinator's Hello does)."""

    def __init__(self) -> None:
        super().__init__()
        self.fleet = Fleet(FleetOptions(**FLEET))
        self.stats = HeartbeatStats()

    async def Connect(self, request_iterator: Any, context: Any) -> None:  # type: ignore[override]
        node_id, _ = node_id_from_certificate(context.auth_context()["x509_pem_cert"][0]) or ("", 0)
        first = await context.read()
        self.fleet.record_heartbeat(
            node_id, translate.heartbeat(pb.Heartbeat(instances=first.hello.instances))
        )
        welcome = pb.Welcome(full_report_every=FleetOptions().full_report_every)
        await context.write(pb.CoordinatorMessage(welcome=welcome))
        while (message := await context.read()) is not grpc.aio.EOF:
            self.count += 1
            if message.HasField("heartbeat"):
                read_at = time.perf_counter()
                beat = translate.heartbeat(message.heartbeat)
                self.fleet.record_heartbeat(node_id, beat)
                delay = max(time.time() - beat.sent_at, 0.0) if beat.sent_at else None
                self.stats.observe(
                    time.perf_counter() - read_at, delay, beat.partial, len(beat.instances) + len(beat.gone)
                )
                self.fleet.vanished(node_id, beat)


def _sync_server(data_dir: Path, sessions: int) -> None:
    """Serve until stdin closes, answering "measure S" lines as bench.heartbeats' bare server does."""
    ca = CertificateAuthority.load_or_create(data_dir)
    key, chain = ca.server_credentials([SERVER_NAME])
    creds = grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=ca.cert_pem, require_client_auth=True
    )
    servicer = _SyncBare()
    server = grpc.server(ThreadPoolExecutor(max_workers=sessions + 64), options=SERVER_OPTIONS)
    pb_grpc.add_CoordinatorServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    print(port, flush=True)
    me = psutil.Process()
    while line := sys.stdin.readline():
        seconds = float(line.split()[1])
        cpu, at, count = sum(me.cpu_times()[:2]), time.monotonic(), servicer.count
        time.sleep(seconds)
        elapsed = time.monotonic() - at
        rate, cores = (servicer.count - count) / elapsed, (sum(me.cpu_times()[:2]) - cpu) / elapsed
        print(f"{rate} {cores}", flush=True)
    server.stop(None)


def _variant(name: str, data_dir: Path, count: int) -> tuple[list[Any], int]:
    if name == "sync":
        server, port = start_server(["bench.heartbeats_ceilings", "sync", str(data_dir), str(count)])
        return [server], port
    if name == "work":
        server, port = start_server(["bench.heartbeats_ceilings", "work", str(data_dir)])
        return [server], port
    first, port = start_server(["bench.heartbeats", "bare", str(data_dir)])
    if name == "aio":
        return [first], port
    second, _ = start_server(["bench.heartbeats", "bare", str(data_dir), str(port)])
    return [first, second], port


def main(sizes: tuple[int, ...]) -> None:
    print(
        "do-nothing servers, the same sessions as bench.heartbeats; figures summed over a variant's processes"
    )
    with tempfile.TemporaryDirectory() as raw:
        tmp = Path(raw)
        data_dir = tmp / "coordinator"
        data_dir.mkdir()
        coordinator = CoordinatorProcess(data_dir, fleet=FLEET, extra={"log_level": "warning"})
        coordinator.start()  # once, for its database and CA
        coordinator.stop()
        seeded = asyncio.run(_seed(data_dir, max(sizes)))
        for count in sizes:
            floods = {}
            for name in ("aio", "sync", "2 aio", "work"):
                steady = measure_servers(*_variant(name, data_dir, count), seeded, count, STEADY_S, tmp)
                floods[name] = measure_servers(*_variant(name, data_dir, count), seeded, count, 0.0, tmp)
                _print(name, count, steady, floods[name])
            share = floods["work"].per_core_s / max(floods["aio"].per_core_s, 1e-9)
            print(f"{count:>6} sessions: the in-memory handling alone leaves {share:.0%} of the aio ceiling")


def _print(name: str, count: int, steady: Phase, flood: Phase) -> None:
    print(
        f"{count:>6} sessions, {name:>5}: at {STEADY_S:g} s RSS {steady.rss_mib:5.0f} MiB on "
        f"{steady.cores:.2f} cores ({steady.rate:5.0f}/s)   flooding {flood.rate:6.0f}/s on "
        f"{flood.cores:.2f} cores = {flood.per_core_s:6.0f} per core-second",
        flush=True,
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "sync":
        _sync_server(Path(sys.argv[2]), int(sys.argv[3]))
    elif len(sys.argv) == 3 and sys.argv[1] == "work":
        asyncio.run(_bare_server(Path(sys.argv[2]), servicer=_Working()))
    else:
        main(tuple(int(a) for a in sys.argv[1:]) or (1_000, 3_000))
