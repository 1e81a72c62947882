"""The one gRPC stream to the coordinator: Hello with the full truth, Welcome with the desired set, then
heartbeats, events and command results up, commands down. Reconnects forever with capped exponential
back-off and full jitter; containers keep running while the coordinator is away, and events wait in a
bounded buffer (oldest dropped, and counted in the next Hello)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from dataclasses import dataclass, field

import grpc

from agent import __version__, identity
from agent.config import AgentConfig
from agent.executor import Executor, Outcome
from agent.heartbeat import HeartbeatDiff
from agent.identity import SERVER_NAME, EnrollmentRefused, Identity
from agent.logs import LogStreams
from agent.metrics import AgentMetrics
from agent.reconcile import Desired
from agent.runtime.base import ContainerInfo, ContainerSpec, ContainerStatus, FileSet, PortBinding, Runtime
from agent.state import Order, Report, ReportKind
from agent.telemetry import Telemetry
from common.logging import get
from protos import moorage_pb2 as pb
from protos import moorage_pb2_grpc as pb_grpc

log = get("agent.session")

#: 2: sends partial heartbeats when the Welcome allows them, and a full one when asked (ReportRequest).
PROTOCOL_VERSION = 2
#: The session's channel. Keepalive: a coordinator that vanished without a FIN (its host died) is noticed
#: within 30 s. No bandwidth-delay probing: our messages are small, and each probe is a PING and an ACK.
CHANNEL_OPTIONS = [
    ("grpc.ssl_target_name_override", SERVER_NAME),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.bdp_probe", 0),
]
#: Log chunks waiting to be sent before a log stream waits for room.
LOG_CHUNKS = 8
WELCOME_TIMEOUT_S = 30.0


@dataclass
class Outbox:
    """Events and results, kept across reconnects; the newest heartbeat rides in a slot of its own so a
    stale one is never queued behind a backlog. The executor reports into it (``report``) and the
    session drains it: neither holds the other."""

    limit: int
    #: After a container's start went out: how soon a heartbeat confirms it (instead of the interval's end).
    confirm_start_after_s: float = 0.0
    items: deque[pb.AgentMessage] = field(default_factory=deque)
    heartbeat: pb.AgentMessage | None = None
    dropped: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set when a heartbeat should go now (a start was reported a moment ago).
    beat_now: asyncio.Event = field(default_factory=asyncio.Event)
    #: Log chunks (agent/logs.py), a lane of their own behind everything else.
    logs: deque[pb.AgentMessage] = field(default_factory=deque)
    log_room: asyncio.Event = field(default_factory=asyncio.Event)

    def report(self, report: Report) -> None:
        self.put(pb.AgentMessage(event=instance_event(report, time.time())))

    def put(self, message: pb.AgentMessage) -> None:
        if len(self.items) >= self.limit:
            self.items.popleft()
            self.dropped += 1
        self.items.append(message)
        self.ready.set()

    async def put_log(self, message: pb.AgentMessage) -> None:
        """A log chunk: sent after heartbeats and events, never in their buffer (a chatty container must not
        push events out of it); waits while LOG_CHUNKS are already waiting."""
        while len(self.logs) >= LOG_CHUNKS:
            self.log_room.clear()
            await self.log_room.wait()
        self.logs.append(message)
        self.ready.set()

    def put_heartbeat(self, message: pb.AgentMessage) -> None:
        self.heartbeat = message
        self.ready.set()

    async def get(self) -> pb.AgentMessage:
        while True:
            if self.heartbeat is not None:
                message, self.heartbeat = self.heartbeat, None
                return message
            if self.items:
                message = self.items.popleft()
                if message.HasField("event") and message.event.kind == pb.EVENT_KIND_STARTED:
                    # The confirming heartbeat is built once the start is on its way, so it can never
                    # overtake it (heartbeats go first) and find the instance not yet starting.
                    self._beat_soon()
                return message
            if self.logs:
                self.log_room.set()
                return self.logs.popleft()
            self.ready.clear()
            await self.ready.wait()

    def _beat_soon(self) -> None:
        if self.confirm_start_after_s > 0:
            asyncio.get_running_loop().call_later(self.confirm_start_after_s, self.beat_now.set)
        else:
            self.beat_now.set()

    def give_back(self, message: pb.AgentMessage) -> None:
        # A heartbeat is superseded by the next; a log chunk's listener went with the session.
        if not message.HasField("heartbeat") and not message.HasField("logs"):
            self.items.appendleft(message)

    def drop_logs(self) -> None:
        self.logs.clear()
        self.log_room.set()


CONTAINER_STATE = {
    ContainerStatus.CREATED: pb.CONTAINER_STATE_CREATED,
    ContainerStatus.RUNNING: pb.CONTAINER_STATE_RUNNING,
    ContainerStatus.PAUSED: pb.CONTAINER_STATE_PAUSED,
    ContainerStatus.RESTARTING: pb.CONTAINER_STATE_RESTARTING,
    ContainerStatus.EXITED: pb.CONTAINER_STATE_EXITED,
    ContainerStatus.DEAD: pb.CONTAINER_STATE_DEAD,
    ContainerStatus.REMOVING: pb.CONTAINER_STATE_DEAD,
}
ORDERS = {
    pb.COMMAND_KIND_DEPLOY: Order.DEPLOY,
    pb.COMMAND_KIND_START: Order.START,
    pb.COMMAND_KIND_STOP: Order.STOP,
    pb.COMMAND_KIND_SUSPEND: Order.SUSPEND,
    pb.COMMAND_KIND_RESTART: Order.RESTART,
    pb.COMMAND_KIND_KILL: Order.KILL,
    pb.COMMAND_KIND_REMOVE: Order.REMOVE,
}
REPORTS = {
    ReportKind.ACCEPTED: pb.EVENT_KIND_ACCEPTED,
    ReportKind.CREATED: pb.EVENT_KIND_CREATED,
    ReportKind.STARTED: pb.EVENT_KIND_STARTED,
    ReportKind.EXITED: pb.EVENT_KIND_EXITED,
    ReportKind.OOM_KILLED: pb.EVENT_KIND_OOM_KILLED,
    ReportKind.REMOVED: pb.EVENT_KIND_REMOVED,
    ReportKind.FAILED: pb.EVENT_KIND_FAILED,
    ReportKind.STOPPED: pb.EVENT_KIND_STOPPED,
}


def to_spec(node_id: str, spec: pb.InstanceSpec) -> ContainerSpec:
    return ContainerSpec(
        instance_id=spec.instance_id,
        node_id=node_id,
        name=spec.name,
        image=spec.image,
        env=dict(spec.env),
        memory_mib=spec.memory_mib,
        cpu_percent=spec.cpu_percent,
        ports=tuple(PortBinding(p.bind_address, p.port) for p in spec.ports),
        command=tuple(spec.command),
        stop_signal=spec.stop_signal or "SIGTERM",
        stop_timeout_s=spec.stop_timeout_s or 10,
        labels=dict(spec.labels),
        files=tuple(FileSet(f.target_dir, dict(f.contents)) for f in spec.files),
        bandwidth_mbps=spec.bandwidth_mbps,
    )


def desired(node_id: str, spec: pb.InstanceSpec) -> Desired:
    return Desired(to_spec(node_id, spec), spec.desired_state != pb.DESIRED_STATE_STOPPED)


def instance_event(report: Report, at: float) -> pb.InstanceEvent:
    return pb.InstanceEvent(
        instance_id=report.instance_id,
        kind=REPORTS[report.kind],
        exit_code=report.exit_code,
        message=report.message,
        at_ms=int(at * 1000),
        container_id=report.container_id,
    )


def command_result(command: pb.Command, outcome: Outcome) -> pb.CommandResult:
    return pb.CommandResult(
        command_id=command.command_id,
        instance_id=command.instance_id,
        ok=outcome.ok,
        error=outcome.error,
        container_id=outcome.container_id,
    )


def instance_status(
    info: ContainerInfo,
    telemetry: Telemetry,
    restarts: int = 0,
    remove_at: float | None = None,
    limit_error: str = "",
) -> pb.InstanceStatus:
    """``restarts``: the crash restarts this agent made (the engine's own count stays 0: we own restarts);
    ``remove_at``: when a container nobody wants is removed (operators see it in the node view meanwhile)."""
    rx, tx, rx_mbps, tx_mbps = telemetry.container_network(info.container_id, info.pid)
    return pb.InstanceStatus(
        instance_id=info.instance_id,
        container_id=info.container_id,
        state=CONTAINER_STATE.get(info.status, pb.CONTAINER_STATE_UNSPECIFIED),
        exit_code=info.exit_code,
        oom_killed=info.oom_killed,
        restarts=info.restart_count + restarts,
        started_at_ms=int(info.started_at * 1000),
        health=info.health,
        rx_bytes=rx,
        tx_bytes=tx,
        rx_mbps=rx_mbps,
        tx_mbps=tx_mbps,
        remove_at_ms=int(remove_at * 1000) if remove_at is not None else 0,
        limit_error=limit_error,
    )


class AgentSession:
    def __init__(
        self,
        config: AgentConfig,
        identity: Identity,
        runtime: Runtime,
        executor: Executor,
        telemetry: Telemetry,
        outbox: Outbox,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or AgentMetrics(enabled=False)
        self.identity = identity
        self.runtime = runtime
        self.executor = executor
        self.telemetry = telemetry
        self.outbox = outbox
        self.heartbeat_interval_s = config.heartbeat_interval_s
        self.connected = asyncio.Event()
        self._seq = 0
        #: When the current attempt got its Welcome (None: not yet).
        self._welcomed_at: float | None = None
        self._commands: set[asyncio.Task[None]] = set()
        #: Which of the configured coordinators the next attempt dials.
        self._turn = 0
        self.logs = LogStreams(runtime, self._container_of, self._send_log)

    async def statuses(self) -> list[pb.InstanceStatus]:
        containers = await self.runtime.list(self.identity.node_id)
        self.telemetry.keep_only({c.container_id for c in containers})
        labelled = [c for c in containers if c.instance_id]
        found = await asyncio.to_thread(
            lambda: [
                instance_status(
                    c,
                    self.telemetry,
                    self.executor.restarts(c.instance_id),
                    self.executor.removal_time(c.instance_id),
                    self.executor.limit_errors.get(c.instance_id, ""),
                )
                for c in labelled
            ]
        )
        self.metrics.containers_seen(
            (c.instance_id, c.status.value, s.rx_bytes, s.tx_bytes)
            for c, s in zip(labelled, found, strict=True)
        )
        return found

    async def run(self) -> None:
        """Hold a session forever. Every end of a call (EOF, UNAVAILABLE, a cancelled call, a timeout) is
        "session lost": reconnect with back-off. Only a refusal retrying cannot fix (node deleted, certificate
        revoked or expired) ends it, as EnrollmentRefused, however it surfaces (a write to the refused call
        raises its status)."""
        backoff = self.config.reconnect_initial_s
        while True:
            self._welcomed_at = None
            try:
                await self._session()
                log.warning("the coordinator closed the session")
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                    raise EnrollmentRefused(f"the coordinator refused this node: {exc.details()}") from exc
                log.warning("session lost", code=exc.code().name, details=exc.details())
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # the agent is stopping
                # grpc raises CancelledError from a call it cancelled itself (its channel went away).
                log.warning("session lost", error="the call was cancelled")
            except Exception as exc:
                log.warning("session lost", error=f"{type(exc).__name__}: {exc}")
            finally:
                self.connected.clear()
                self.metrics.connected(False)
            if self.identity.not_after() <= time.time():
                raise EnrollmentRefused(
                    "this node's certificate has expired; issue a new join token "
                    "(POST /api/nodes/{id}/join-token) and enroll again with an empty data directory"
                )
            welcomed_at = self._welcomed_at
            if welcomed_at is not None and time.monotonic() - welcomed_at >= 2 * self.heartbeat_interval_s:
                # The session held (a coordinator restarted, the network blipped): come back quickly. One
                # lost at once after its Welcome (a coordinator failing on every session) backs off further.
                backoff = self.config.reconnect_initial_s
            delay = random.uniform(backoff / 2, backoff)  # jitter: a fleet does not reconnect in lockstep
            self._turn += 1  # a lost session tries the next coordinator (the same one when there is one)
            self.metrics.reconnecting()
            log.info("reconnecting", in_s=round(delay, 2), to=self.target)
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, self.config.reconnect_max_s)

    @property
    def target(self) -> str:
        """The coordinator the next (or current) attempt dials."""
        addresses = self.config.coordinators()
        return addresses[self._turn % len(addresses)] if addresses else self.config.coordinator

    async def _hello(self) -> pb.Hello:
        statuses = await self.statuses()
        images = await self.runtime.images()
        dropped, self.outbox.dropped = self.outbox.dropped, 0
        return pb.Hello(
            agent_version=__version__,
            protocol_version=PROTOCOL_VERSION,
            capacity=pb.Capacity(
                **self.telemetry.capacity(self.config.memory_mib, self.config.disk_mib, self.config.cpu_count)
            ),
            instances=statuses,
            images=images,
            pull_policy=self.config.pull_policy.value,
            dropped_events=dropped,
        )

    async def _session(self) -> None:
        creds = self.identity.channel_credentials()
        async with grpc.aio.secure_channel(self.target, creds, options=CHANNEL_OPTIONS) as channel:
            call = pb_grpc.CoordinatorStub(channel).Connect()
            try:
                await self._converse(call)
            except asyncio.InvalidStateError:
                if not call.done():
                    raise  # not grpc's: the call is still open
                # A write to a call that had already ended (the coordinator refuses before it reads the Hello,
                # which takes a while to gather on a full host). The error hides why; the call's status says,
                # and a refusal must end the agent, not be retried for ever.
                code = await call.code()
                if code == grpc.StatusCode.OK:
                    return  # the coordinator closed the session
                raise grpc.aio.AioRpcError(
                    code,
                    await call.initial_metadata(),
                    await call.trailing_metadata(),
                    await call.details(),
                ) from None

    async def _converse(
        self, call: grpc.aio.StreamStreamCall[pb.AgentMessage, pb.CoordinatorMessage]
    ) -> None:
        """One call: Hello, Welcome, then read and write until either side ends it."""
        hello = await self._hello()
        await call.write(pb.AgentMessage(hello=hello))
        first = await asyncio.wait_for(call.read(), WELCOME_TIMEOUT_S)
        if not isinstance(first, pb.CoordinatorMessage) or not first.HasField("welcome"):
            raise ConnectionError("the coordinator did not answer Hello with Welcome")
        welcome = first.welcome
        if welcome.heartbeat_interval_ms:
            self.heartbeat_interval_s = welcome.heartbeat_interval_ms / 1000
        every = welcome.full_report_every
        beats = HeartbeatDiff(every, hello.instances, phase=random.randrange(every) if every else 0)
        log.info(
            "connected", node_id=welcome.node_id, desired=len(welcome.desired), remove=len(welcome.remove)
        )
        self.connected.set()
        self.metrics.connected(True)
        self._welcomed_at = time.monotonic()
        self._reconcile(welcome)
        tasks = [
            asyncio.create_task(self._read(call, beats), name="session-reader"),
            asyncio.create_task(self._write(call, beats), name="session-writer"),
            asyncio.create_task(self._heartbeats(), name="session-heartbeats"),
            asyncio.create_task(self._renew_when_due(), name="certificate-renewal"),
        ]
        try:
            done, _ = await asyncio.wait(tasks[:2], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.cancelled():
                    raise ConnectionError(f"the {task.get_name()} was cancelled with its call")
                task.result()  # re-raise the reader's or writer's error
        finally:
            for task in tasks:
                task.cancel()
            # Whatever the others ended with belongs to the same lost call.
            await asyncio.gather(*tasks, return_exceptions=True)
            # So do the log streams: their listeners were on the other end of this call.
            self.outbox.drop_logs()
            await self.logs.close()

    def _reconcile(self, welcome: pb.Welcome) -> None:
        """Converge to the Welcome's desired set. Not tied to this call: a session lost halfway must not
        cancel a deploy halfway. A newer Welcome's set replaces this one at once, and every step checks the
        set in force under its instance's lock, so an older reconcile still running cannot undo it."""
        wanted = {s.instance_id: desired(self.identity.node_id, s) for s in welcome.desired}
        task = asyncio.create_task(self.executor.reconcile(wanted, set(welcome.remove)), name="reconcile")
        self._commands.add(task)
        task.add_done_callback(self._commands.discard)

    async def _read(
        self, call: grpc.aio.StreamStreamCall[pb.AgentMessage, pb.CoordinatorMessage], beats: HeartbeatDiff
    ) -> None:
        while True:
            message = await call.read()
            if not isinstance(message, pb.CoordinatorMessage):
                return  # EOF
            if message.HasField("command"):
                task = asyncio.create_task(self._run_command(message.command))
                self._commands.add(task)
                task.add_done_callback(self._commands.discard)
            elif message.HasField("renewed"):
                self._install_certificate(bytes(message.renewed.certificate_pem))
            elif message.HasField("logs"):
                r = message.logs
                self.logs.handle(r.request_id, r.instance_id, r.tail, r.follow, r.cancel)
            elif message.HasField("report"):
                beats.ask_full()
                self.outbox.beat_now.set()

    async def _container_of(self, instance_id: str) -> str | None:
        found = await self.runtime.find(self.identity.node_id, instance_id)
        return found.container_id if found is not None else None

    async def _send_log(self, request_id: str, data: bytes, end: bool, error: str) -> None:
        chunk = pb.LogChunk(request_id=request_id, data=data, end=end, error=error)
        await self.outbox.put_log(pb.AgentMessage(logs=chunk))

    async def _run_command(self, command: pb.Command) -> None:
        began = time.monotonic()
        order = ORDERS.get(command.kind)
        if order is None:
            known = command.kind in pb.CommandKind.values()
            name = pb.CommandKind.Name(command.kind) if known else str(command.kind)
            outcome = Outcome(False, error=f"command {name} is not supported by this agent")
        else:
            want = None if order is Order.REMOVE else desired(self.identity.node_id, command.spec)
            outcome = await self.executor.command(order, command.instance_id, want)
        self.outbox.put(pb.AgentMessage(result=command_result(command, outcome)))
        kind = pb.CommandKind.Name(command.kind) if command.kind in pb.CommandKind.values() else "unknown"
        self.metrics.command(kind.removeprefix("COMMAND_KIND_").lower(), outcome.ok, time.monotonic() - began)

    async def _write(
        self, call: grpc.aio.StreamStreamCall[pb.AgentMessage, pb.CoordinatorMessage], beats: HeartbeatDiff
    ) -> None:
        while True:
            message = await self.outbox.get()
            if message.HasField("heartbeat"):
                # Shaped as it goes: a partial heartbeat says what changed since the last that went.
                message = pb.AgentMessage(heartbeat=beats.shape(message.heartbeat))
            try:
                await call.write(message)
            except BaseException:
                self.outbox.give_back(message)
                raise
            if message.HasField("heartbeat"):
                self.metrics.heartbeat_sent()

    async def _renew_when_due(self) -> None:
        """Ask for a new certificate two thirds into the current one's life (at once if that is past),
        and again every minute until one arrives."""
        while True:
            await asyncio.sleep(max(0.0, self.identity.renew_at() - time.time()))
            log.info("renewing the node certificate", not_after=self.identity.not_after())
            csr = await asyncio.to_thread(identity.csr_for, self.identity.key_pem)
            self.outbox.put(pb.AgentMessage(renew=pb.RenewRequest(csr_pem=csr)))
            await asyncio.sleep(min(60.0, max(1.0, (self.identity.not_after() - time.time()) / 4)))

    def _install_certificate(self, cert_pem: bytes) -> None:
        """The renewed certificate replaces the file atomically; the current session goes on, the next one
        presents the new certificate (the coordinator no longer accepts the old)."""
        renewed = self.identity.with_certificate(cert_pem)
        identity.save_certificate(self.config.data_dir, cert_pem)
        self.identity = renewed
        log.info("node certificate renewed", not_after=renewed.not_after())

    async def _heartbeats(self) -> None:
        while True:
            # Cleared before the beat is built, not after: a start sent meanwhile (its statuses may have been
            # read before the container ran) asks for the next beat, which then goes at once.
            self.outbox.beat_now.clear()
            try:
                self._seq += 1
                host = pb.HostMetrics(**await asyncio.to_thread(self.telemetry.host))
                beat = pb.Heartbeat(seq=self._seq, sent_at_ms=int(time.time() * 1000), host=host)
                try:
                    # Bounded: an engine shutting down may accept the request and never answer.
                    wait_s = max(self.heartbeat_interval_s, 2.0)
                    beat.instances.extend(await asyncio.wait_for(self.statuses(), wait_s))
                except Exception as exc:
                    # The engine is down or restarting: this host and agent are alive, its containers unknown.
                    why = str(exc) or f"no answer within {wait_s:g} s"
                    beat.engine_error = f"the container engine does not answer: {why}"[:500]
                self.outbox.put_heartbeat(pb.AgentMessage(heartbeat=beat))
            except Exception as exc:
                log.warning("heartbeat skipped", error=str(exc))
            interval = self.heartbeat_interval_s * random.uniform(0.9, 1.1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.outbox.beat_now.wait(), interval)
