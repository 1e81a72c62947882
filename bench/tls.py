"""Enrollment time, and what mutual TLS costs a heartbeat.

1. Enrollment: `agent.identity.enroll` against a real coordinator process (CA fetched and pinned, key
   generated, CSR signed over TLS), median over N fresh tokens.
2. Heartbeat cost: one process holds a gRPC server and one agent-like stream that sends N realistic
   heartbeats (host metrics and five instance statuses); measured once over plaintext and once over mutual
   TLS with the coordinator's own certificates. Figures are CPU time (client and server together) and wall
   time per heartbeat.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from agent.identity import JoinToken, enroll, new_key_and_csr
from bench.daemons import CoordinatorProcess, create_node, port_block
from coordinator.security.pki import CertificateAuthority
from protos import moorage_pb2 as pb
from protos import moorage_pb2_grpc as pb_grpc

ENROLLMENTS = 20
HEARTBEATS = 20_000
ROUNDS = 5


def heartbeat(seq: int) -> pb.AgentMessage:
    instances = [
        pb.InstanceStatus(
            instance_id=f"00000000-0000-0000-0000-00000000000{i}",
            container_id="c" * 64,
            state=pb.CONTAINER_STATE_RUNNING,
            started_at_ms=1_700_000_000_000,
            rx_bytes=123_456_789,
            tx_bytes=987_654_321,
            rx_mbps=1.5,
            tx_mbps=7.25,
        )
        for i in range(5)
    ]
    host = pb.HostMetrics(
        cpu_percent=17.0,
        memory_used_mib=4000,
        memory_total_mib=24000,
        disk_used_mib=10_000,
        disk_total_mib=200_000,
        load1=0.5,
        load5=0.4,
        load15=0.3,
        net_rx_mbps=3,
        net_tx_mbps=9,
    )
    return pb.AgentMessage(heartbeat=pb.Heartbeat(seq=seq, sent_at_ms=seq, host=host, instances=instances))


class Counter(pb_grpc.CoordinatorServicer):
    def __init__(self) -> None:
        self.done = asyncio.Event()

    async def Enroll(
        self, request: pb.EnrollRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.EnrollResponse:
        raise NotImplementedError

    async def Connect(
        self, request_iterator: AsyncIterator[pb.AgentMessage], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.CoordinatorMessage]:
        n = 0
        async for message in request_iterator:
            n += message.HasField("heartbeat")
            if n == HEARTBEATS:
                self.done.set()
        yield pb.CoordinatorMessage()


async def stream_heartbeats(secure: bool, ca: CertificateAuthority) -> tuple[float, float]:
    servicer = Counter()
    server = grpc.aio.server()
    pb_grpc.add_CoordinatorServicer_to_server(servicer, server)
    options = [("grpc.ssl_target_name_override", "moorage-coordinator")]
    if secure:
        key, chain = ca.server_credentials(["moorage-coordinator"])
        port = server.add_secure_port(
            "127.0.0.1:0", grpc.ssl_server_credentials([(key, chain)], ca.cert_pem, require_client_auth=True)
        )
        client_key, csr = new_key_and_csr()
        cert = ca.sign_node(csr, "bench-node", dt.timedelta(days=1)).pem
        channel = grpc.aio.secure_channel(
            f"127.0.0.1:{port}", grpc.ssl_channel_credentials(ca.cert_pem, client_key, cert), options
        )
    else:
        port = server.add_insecure_port("127.0.0.1:0")
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    await server.start()
    beats = [heartbeat(i) for i in range(HEARTBEATS)]
    try:
        call = pb_grpc.CoordinatorStub(channel).Connect()
        cpu, wall = time.process_time(), time.perf_counter()
        for beat in beats:
            await call.write(beat)
        await servicer.done.wait()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        await call.done_writing()
        async for _ in call:
            pass
    finally:
        await channel.close()
        await server.stop(1)
    return cpu / HEARTBEATS, wall / HEARTBEATS


def enrollment_times(tmp: Path) -> list[float]:
    coordinator = CoordinatorProcess(tmp / "c")
    coordinator.start()
    try:
        api = coordinator.api()
        address = f"127.0.0.1:{coordinator.endpoints['enroll_port']}"
        times = []
        for n in range(ENROLLMENTS):
            token = JoinToken.parse(create_node(api, port_block(1), name=f"bench-{n}")["joinToken"])
            start = time.perf_counter()
            asyncio.run(enroll(address, token, "bench"))
            times.append(time.perf_counter() - start)
        return times
    finally:
        coordinator.stop()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        times = enrollment_times(Path(tmp))
        print(
            f"enrollment (pin CA, key, CSR, sign)   median {statistics.median(times) * 1000:6.1f} ms   "
            f"max {max(times) * 1000:6.1f} ms   (n={len(times)})"
        )
        ca = CertificateAuthority.load_or_create(Path(tmp) / "ca")
        # Alternating rounds, median of each: single runs on a 2-core VM vary by tens of percent.
        runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for _ in range(ROUNDS):
            for secure in (False, True):
                runs[secure].append(asyncio.run(stream_heartbeats(secure, ca)))
    plain_cpu, plain_wall = (statistics.median(v) for v in zip(*runs[False], strict=True))
    tls_cpu, tls_wall = (statistics.median(v) for v in zip(*runs[True], strict=True))
    for label, cpu, wall in (("plaintext gRPC", plain_cpu, plain_wall), ("mutual TLS", tls_cpu, tls_wall)):
        print(f"heartbeat over {label:<23} {cpu * 1e6:6.1f} µs CPU   {wall * 1e6:6.1f} µs wall")
    extra = (tls_cpu / plain_cpu - 1) * 100
    print(f"mutual TLS costs {extra:+.1f} % CPU per heartbeat (median of {ROUNDS} rounds of {HEARTBEATS})")


if __name__ == "__main__":
    main()
