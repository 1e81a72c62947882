"""The gRPC face agents talk to.

Two ports share one servicer: the session port requires a client certificate from our CA (mutual TLS) and
serves Connect; the enrollment port has server-only TLS, because an agent has no certificate until Enroll
gives it one. The node id always comes from the verified certificate, never from a message field.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from common.logging import get
from coordinator.domain.agents import Renewed
from coordinator.fleet.live import Session
from coordinator.gateway import translate
from coordinator.security.pki import node_id_from_certificate
from coordinator.service.agent_reports import AgentReports
from coordinator.service.core import Core
from coordinator.service.errors import ServiceError
from coordinator.service.nodes import NodeService
from coordinator.store import nodes as nodes_store
from protos import moorage_pb2 as pb
from protos import moorage_pb2_grpc as pb_grpc

log = get("coordinator.gateway")

NAMES = ["moorage-coordinator"]  # always in the server certificate; agents verify against this name

#: Measured with `python -m bench.heartbeats` (3,000 sessions at 5 s, the same run each way):
SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # No bandwidth-delay probing: it answers every read of a quiet stream with a PING (and the agent with
    # its ACK), two frames a heartbeat for a window our small messages never fill. Off, the transport's
    # threads use about a third of the CPU they did (0.27-0.29 -> 0.20-0.24 cores for the whole process).
    ("grpc.http2.bdp_probe", 0),
    # TLS records of at most 4 KiB: the frame protector keeps a buffer of this size per connection
    # (16 KiB by default); with channelz off too, ~8 KB less a session.
    ("grpc.tsi.max_frame_size", 4096),
    ("grpc.enable_channelz", 0),
]


class Inbox:
    """A session's messages waiting for their database work, worked through by a task that exists only
    while there is work (most heartbeats need none: an idle session keeps no task for it). A heartbeat that
    finds another heartbeat last in line takes its place, merged with it (a partial one says only what
    changed since the one before), so a slow database cannot grow the queue without bound while the agent
    is healthy."""

    def __init__(self, handle: Callable[[tuple[str, Any]], Awaitable[None]]) -> None:
        self._items: deque[tuple[str, Any]] = deque()
        self._handle = handle
        self._worker: asyncio.Task[None] | None = None

    def put(self, item: tuple[str, Any]) -> None:
        """``item``: (message kind, its translated body)."""
        if item[0] == "heartbeat" and self._items and self._items[-1][0] == "heartbeat":
            self._items[-1] = ("heartbeat", self._items[-1][1].then(item[1]))
        else:
            self._items.append(item)
        if self._worker is None:
            self._worker = asyncio.create_task(self._work())

    async def _work(self) -> None:
        try:
            while self._items:
                await self._handle(self._items.popleft())
        finally:
            # No await since the last check: a put from now on starts the next worker (also after a
            # handler ended this one with a BaseException, so the session's later messages are handled).
            self._worker = None

    async def close(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker


class Writer:
    """Writes a session's outbox to its stream, in a task that exists only while there is something to
    write (Session.wake starts it): one write at a time, in order."""

    def __init__(self, session: Session, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self._session = session
        self._context = context
        self._task: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None

    def wake(self) -> None:
        if self._task is None and self._failed is None:
            self._task = asyncio.create_task(self._write())

    async def _write(self) -> None:
        outbox = self._session.outbox
        try:
            while outbox:
                message = outbox.popleft()
                if message is None:
                    break
                await self._context.write(translate.message(message))
        except Exception as exc:  # the stream is gone; the read side ends the session
            self._failed = exc
        finally:
            self._task = None  # no await since the last check: the next wake starts a new writer

    async def close(self) -> None:
        task, self._task = self._task, None
        self._failed = self._failed or asyncio.CancelledError()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Gateway(pb_grpc.CoordinatorServicer):
    def __init__(self, core: Core, nodes: NodeService, reports: AgentReports) -> None:
        self.core = core
        self.nodes = nodes
        self.reports = reports
        #: Per message kind: its translation out of protobuf and its handler.
        self.handlers: dict[str, tuple[Callable[[Any], Any], Callable[[str, Any], Awaitable[None]]]] = {
            "heartbeat": (translate.heartbeat, reports.heartbeat),
            "event": (translate.event, reports.event),
            "result": (translate.result, reports.result),
            "renew": (lambda r: bytes(r.csr_pem), self._renew),
        }

    async def Enroll(
        self, request: pb.EnrollRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.EnrollResponse:
        try:
            enrollment = await self.nodes.enroll(
                request.token_id, request.token_secret, bytes(request.csr_pem), request.agent_version
            )
        except ServiceError as exc:
            code = grpc.StatusCode.UNAUTHENTICATED if exc.status == 401 else grpc.StatusCode.INVALID_ARGUMENT
            log.warning("enrollment refused", hostname=request.hostname, reason=exc.message)
            await context.abort(code, exc.message)
        log.info("node enrolled", node_id=enrollment.node_id, hostname=request.hostname)
        return pb.EnrollResponse(
            node_id=enrollment.node_id,
            certificate_pem=enrollment.certificate_pem,
            ca_certificate_pem=enrollment.ca_certificate_pem,
        )

    async def _authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        auth = context.auth_context()
        pems = list(auth.get("x509_pem_cert") or [])
        if not pems:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required")
        identity = node_id_from_certificate(pems[0])
        if identity is None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not a node certificate")
        assert identity is not None
        node_id, serial = identity
        async with self.core.store.read() as conn:
            current = await nodes_store.cert_serial(conn, node_id)
        if current is None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "this node was deleted or never enrolled")
        if current != serial:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "this certificate was replaced or revoked")
        return node_id

    async def Connect(  # type: ignore[override]  # writes through context.write, returns nothing
        self,
        request_iterator: AsyncIterator[pb.AgentMessage],
        context: grpc.aio.ServicerContext[pb.AgentMessage, pb.CoordinatorMessage],
    ) -> None:
        node_id = await self._authenticate(context)
        first = await context.read()
        if not isinstance(first, pb.AgentMessage) or not first.HasField("hello"):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "the first message must be Hello")
        assert isinstance(first, pb.AgentMessage)
        session = self.core.fleet.attach(node_id)
        self.core.metrics.sessions.set(len(self.core.fleet.sessions))
        log.info("agent connected", node_id=node_id, agent_version=first.hello.agent_version)
        # One task a session while it is idle, this one, reading; writing and database work get a task
        # only while they have something to do (10,000 sessions: each task is memory and loop turns).
        writer = Writer(session, context)
        session.wake = writer.wake
        me = asyncio.current_task()
        assert me is not None
        try:
            welcome = await self.reports.hello(node_id, translate.hello(first.hello))
            session.send(welcome)
            if not session.closed:
                # Ends when the agent hangs up, or when we close the session (node deleted, replaced).
                session.on_close = functools.partial(_cancel, me)
                try:
                    await self._read(node_id, context)
                except asyncio.CancelledError:
                    if not session.closed or me.cancelling() > 1:
                        raise  # cancelled from outside (the server stops), not closed by us
                    me.uncancel()
        finally:
            session.on_close = session.wake = None
            self.core.fleet.detach(session)
            self.core.metrics.sessions.set(len(self.core.fleet.sessions))
            await writer.close()
            log.info("agent disconnected", node_id=node_id)

    async def _read(self, node_id: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Read without ever waiting for the database: a heartbeat counts for liveness as it arrives; what
        needs a write goes to the session's worker, in order (consecutive heartbeats coalesce). A heartbeat
        is translated once, here, and handed on translated."""
        inbox = Inbox(functools.partial(self._handle, node_id))
        metrics = self.core.metrics
        try:
            while True:
                message = await context.read()
                if message is grpc.aio.EOF:
                    return
                assert isinstance(message, pb.AgentMessage)
                if message.HasField("heartbeat"):
                    read_at = time.perf_counter()
                    beat = translate.heartbeat(message.heartbeat)
                    self.reports.note_heartbeat(node_id, beat)
                    metrics.heartbeats.observe(
                        time.perf_counter() - read_at,
                        max(time.time() - beat.sent_at, 0.0) if beat.sent_at else None,
                        beat.partial,
                        len(beat.instances) + len(beat.gone),
                    )
                    if self.reports.needs_work(node_id, beat):
                        inbox.put(("heartbeat", beat))
                    continue
                if message.HasField("logs"):  # to its reader, at once: no database work
                    self.core.fleet.logs.deliver(translate.log_chunk(message.logs))
                    continue
                kind = message.WhichOneof("body") or ""
                found = self.handlers.get(kind)
                if found is None:
                    log.warning("unexpected message from agent", node_id=node_id, kind=kind)
                    continue
                inbox.put((kind, found[0](getattr(message, kind))))
        finally:
            await inbox.close()

    async def _renew(self, node_id: str, csr_pem: bytes) -> None:
        pem = await self.nodes.renew(node_id, csr_pem)
        session = self.core.fleet.sessions.get(node_id)
        if session is not None:
            session.send(Renewed(pem))

    async def _handle(self, node_id: str, item: tuple[str, Any]) -> None:
        kind, body = item
        try:
            await self.handlers[kind][1](node_id, body)
        except Exception:
            # One bad report must not end the session (and with it every other instance's reporting).
            log.exception("handling an agent message failed", node_id=node_id, kind=kind)


def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()


def server_credentials(core: Core, *, mutual: bool) -> grpc.ServerCredentials:
    key, chain = core.ca.server_credentials(NAMES + core.config.grpc.tls_names)
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=core.ca.cert_pem if mutual else None, require_client_auth=mutual
    )


async def start_server(core: Core, gateway: Gateway) -> tuple[grpc.aio.Server, int, int]:
    """Start both ports; returns (server, session port, enrollment port)."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    pb_grpc.add_CoordinatorServicer_to_server(gateway, server)
    try:
        session_port = server.add_secure_port(core.config.grpc.listen, server_credentials(core, mutual=True))
        enroll_port = server.add_secure_port(
            core.config.enroll_listen, server_credentials(core, mutual=False)
        )
    except RuntimeError as exc:
        await server.stop(None)
        raise RuntimeError(
            f"cannot listen on {core.config.grpc.listen} (grpc.listen) or {core.config.enroll_listen} "
            f"(grpc.enroll_listen): the address is taken or invalid"
        ) from exc
    await server.start()
    return server, session_port, enroll_port
