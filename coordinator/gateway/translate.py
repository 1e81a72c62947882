"""Protobuf <-> domain, in both directions: the only place that knows both shapes.

Agents' reports become coordinator.domain.agents records as they are read; what use cases send becomes
protobuf as it is written. A heartbeat is translated once, on arrival, and nothing downstream pays again.
"""

from __future__ import annotations

from coordinator.domain import agents
from coordinator.domain.records import HostMetrics, InstanceState
from protos import moorage_pb2 as pb

STOPPED_STATES = frozenset({InstanceState.STOPPED, InstanceState.SUSPENDED})

#: Where a server's CA, certificate and key appear inside its container (read-only).
TLS_DIR = "/etc/moorage/tls"
#: The environment variable that carries a server's secret.
SECRET_VARIABLE = "MOORAGE_SECRET"

_STATES = {
    pb.CONTAINER_STATE_UNSPECIFIED: agents.ContainerState.UNSPECIFIED,
    pb.CONTAINER_STATE_ABSENT: agents.ContainerState.ABSENT,
    pb.CONTAINER_STATE_CREATED: agents.ContainerState.CREATED,
    pb.CONTAINER_STATE_RUNNING: agents.ContainerState.RUNNING,
    pb.CONTAINER_STATE_EXITED: agents.ContainerState.EXITED,
    pb.CONTAINER_STATE_RESTARTING: agents.ContainerState.RESTARTING,
    pb.CONTAINER_STATE_PAUSED: agents.ContainerState.PAUSED,
    pb.CONTAINER_STATE_DEAD: agents.ContainerState.DEAD,
}
_EVENTS = {
    pb.EVENT_KIND_UNSPECIFIED: agents.EventKind.UNSPECIFIED,
    pb.EVENT_KIND_ACCEPTED: agents.EventKind.ACCEPTED,
    pb.EVENT_KIND_CREATED: agents.EventKind.CREATED,
    pb.EVENT_KIND_STARTED: agents.EventKind.STARTED,
    pb.EVENT_KIND_EXITED: agents.EventKind.EXITED,
    pb.EVENT_KIND_OOM_KILLED: agents.EventKind.OOM_KILLED,
    pb.EVENT_KIND_REMOVED: agents.EventKind.REMOVED,
    pb.EVENT_KIND_FAILED: agents.EventKind.FAILED,
    pb.EVENT_KIND_STOPPED: agents.EventKind.STOPPED,
}
_KINDS = {
    agents.CommandKind.DEPLOY: pb.COMMAND_KIND_DEPLOY,
    agents.CommandKind.START: pb.COMMAND_KIND_START,
    agents.CommandKind.STOP: pb.COMMAND_KIND_STOP,
    agents.CommandKind.RESTART: pb.COMMAND_KIND_RESTART,
    agents.CommandKind.KILL: pb.COMMAND_KIND_KILL,
    agents.CommandKind.REMOVE: pb.COMMAND_KIND_REMOVE,
    agents.CommandKind.SUSPEND: pb.COMMAND_KIND_SUSPEND,
}

# ------------------------------------------------------------------ agent -> coordinator


def status(s: pb.InstanceStatus) -> agents.InstanceStatus:
    return agents.InstanceStatus(
        instance_id=s.instance_id,
        container_id=s.container_id,
        # A state this coordinator does not know yet (a newer agent) reads as unspecified: not running.
        state=_STATES.get(s.state, agents.ContainerState.UNSPECIFIED),
        exit_code=s.exit_code,
        oom_killed=s.oom_killed,
        restarts=s.restarts,
        started_at_ms=s.started_at_ms,
        health=s.health,
        rx_bytes=s.rx_bytes,
        tx_bytes=s.tx_bytes,
        rx_mbps=s.rx_mbps,
        tx_mbps=s.tx_mbps,
        remove_at_ms=s.remove_at_ms,
        limit_error=s.limit_error,
    )


def host_metrics(h: pb.HostMetrics) -> HostMetrics:
    return HostMetrics(
        cpu_percent=h.cpu_percent,
        memory_used_mib=h.memory_used_mib,
        memory_total_mib=h.memory_total_mib,
        disk_used_mib=h.disk_used_mib,
        disk_total_mib=h.disk_total_mib,
        load1=h.load1,
        load5=h.load5,
        load15=h.load15,
        net_rx_mbps=h.net_rx_mbps,
        net_tx_mbps=h.net_tx_mbps,
    )


def heartbeat(hb: pb.Heartbeat) -> agents.Heartbeat:
    sent_at = hb.sent_at_ms / 1000 if hb.sent_at_ms else None
    if not hb.partial:
        return agents.Heartbeat(
            instances=tuple(map(status, hb.instances)),
            host=host_metrics(hb.host) if hb.HasField("host") else None,
            engine_error=hb.engine_error,
            sent_at=sent_at,
        )
    # The usual partial heartbeat: alive, and the counters of the containers that moved bytes.
    counters = tuple(
        agents.Counters(c.instance_id, c.rx_bytes, c.tx_bytes, c.rx_mbps, c.tx_mbps) for c in hb.counters
    )
    if not hb.instances:
        return agents.Heartbeat(
            sent_at=sent_at, partial=True, engine_error=hb.engine_error, counters=counters
        )
    absent = pb.CONTAINER_STATE_ABSENT
    return agents.Heartbeat(
        instances=tuple(status(s) for s in hb.instances if s.state != absent),
        host=host_metrics(hb.host) if hb.HasField("host") else None,
        engine_error=hb.engine_error,
        sent_at=sent_at,
        partial=True,
        gone=frozenset(s.instance_id for s in hb.instances if s.state == absent),
        counters=counters,
    )


def hello(h: pb.Hello) -> agents.Hello:
    return agents.Hello(
        agent_version=h.agent_version,
        cpu_count=h.capacity.cpu_count,
        instances=tuple(map(status, h.instances)),
        images=frozenset(h.images),
        pull_policy=h.pull_policy or "missing",
    )


def event(ev: pb.InstanceEvent) -> agents.InstanceEvent:
    return agents.InstanceEvent(
        instance_id=ev.instance_id,
        kind=_EVENTS.get(ev.kind, agents.EventKind.UNSPECIFIED),
        exit_code=ev.exit_code,
        message=ev.message,
        container_id=ev.container_id,
    )


def result(r: pb.CommandResult) -> agents.CommandResult:
    return agents.CommandResult(
        command_id=r.command_id,
        instance_id=r.instance_id,
        ok=r.ok,
        error=r.error,
        container_id=r.container_id,
    )


# ------------------------------------------------------------------ coordinator -> agent


def instance_spec(workload: agents.Workload) -> pb.InstanceSpec:
    """A server's opened identity: its TLS files are mounted and its secret set in the environment."""
    inst, opened = workload.instance, workload.identity
    primary = inst.primary
    env = dict(inst.env)
    if primary is not None:
        # Every instance learns where it is reachable; the allocation wins over any variable of that name.
        env["SERVER_PORT"] = str(primary.port)
        env["SERVER_IP"] = primary.bind_address
    files: list[pb.MountedFiles] = []
    if opened is not None:
        env[SECRET_VARIABLE] = opened.secret
        files.append(
            pb.MountedFiles(
                target_dir=TLS_DIR,
                contents={
                    "ca.pem": opened.ca_cert.encode(),
                    "cert.pem": opened.tls_cert.encode(),
                    "key.pem": opened.tls_key.encode(),
                },
            )
        )
    return pb.InstanceSpec(
        instance_id=inst.id,
        name=inst.name,
        image=inst.image_ref,
        command=inst.command,
        env=env,
        memory_mib=inst.memory_mib,
        cpu_percent=inst.cpu_percent,
        disk_mib=inst.disk_mib,
        ports=[
            pb.PortBinding(bind_address=a.bind_address, port=a.port, primary=a.primary)
            for a in inst.allocations
        ],
        stop_signal=inst.stop_signal,
        stop_timeout_s=10,
        desired_state=(
            pb.DESIRED_STATE_STOPPED
            if inst.state in STOPPED_STATES or inst.suspended
            else pb.DESIRED_STATE_RUNNING
        ),
        labels={"moorage.organization": str(inst.organization_id)},
        files=files,
        bandwidth_mbps=inst.bandwidth_mbps,
    )


def command(c: agents.Command) -> pb.Command:
    """A command carries the whole spec and its own id, so the agent can apply it idempotently."""
    return pb.Command(
        command_id=c.command_id,
        kind=_KINDS[c.kind],
        instance_id=c.instance_id,
        spec=instance_spec(c.workload),
    )


def welcome(w: agents.Welcome) -> pb.Welcome:
    return pb.Welcome(
        node_id=w.node_id,
        heartbeat_interval_ms=int(w.heartbeat_interval_s * 1000),
        desired=[instance_spec(d) for d in w.desired],
        remove=list(w.remove),
        full_report_every=w.full_report_every,
    )


def message(out: agents.Outgoing) -> pb.CoordinatorMessage:
    if isinstance(out, agents.Command):
        return pb.CoordinatorMessage(command=command(out))
    if isinstance(out, agents.Welcome):
        return pb.CoordinatorMessage(welcome=welcome(out))
    if isinstance(out, agents.LogsRequest):
        return pb.CoordinatorMessage(
            logs=pb.LogsRequest(
                request_id=out.request_id,
                instance_id=out.instance_id,
                tail=out.tail,
                follow=out.follow,
                cancel=out.cancel,
            )
        )
    if isinstance(out, agents.ReportRequest):
        return pb.CoordinatorMessage(report=pb.ReportRequest())
    return pb.CoordinatorMessage(renewed=pb.RenewResponse(certificate_pem=out.certificate_pem))


def log_chunk(m: pb.LogChunk) -> agents.LogChunk:
    return agents.LogChunk(m.request_id, bytes(m.data), m.end, m.error)
