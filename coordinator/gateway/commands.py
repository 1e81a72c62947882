"""Building the messages the coordinator sends to agents from domain records."""

from __future__ import annotations

import uuid

from coordinator.domain.records import Instance, InstanceState, ServerIdentity
from protos import moorage_pb2 as pb

STOPPED_STATES = frozenset({InstanceState.STOPPED, InstanceState.SUSPENDED})

#: Where a server's CA, certificate and key appear inside its container (read-only).
TLS_DIR = "/etc/moorage/tls"
#: The environment variable that carries a server's secret.
SECRET_VARIABLE = "MOORAGE_SECRET"


def instance_spec(inst: Instance, opened: ServerIdentity | None = None) -> pb.InstanceSpec:
    """``opened``: the instance's server identity with its secrets opened (Core.spec does that); its
    TLS files are mounted and its secret set in the environment."""
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


def command(kind: pb.CommandKind.ValueType, spec: pb.InstanceSpec) -> pb.Command:
    """A command carries the whole spec and a fresh id, so the agent can apply it idempotently."""
    return pb.Command(command_id=uuid.uuid4().hex, kind=kind, instance_id=spec.instance_id, spec=spec)
