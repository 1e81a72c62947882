"""The gateway's translation between protobuf and the domain: nothing an agent says is lost on the way in,
and what a use case sends arrives whole."""

from __future__ import annotations

import pytest

from coordinator.domain.agents import (
    Command,
    CommandKind,
    ContainerState,
    EventKind,
    Renewed,
    Welcome,
    Workload,
)
from coordinator.domain.records import Allocation, InstanceState, ServerIdentity
from coordinator.gateway import translate
from protos import moorage_pb2 as pb
from tests.unit.factories import make_instance


def test_every_protocol_state_and_event_kind_has_a_domain_name() -> None:
    assert {translate.status(pb.InstanceStatus(state=v)).state for v in pb.ContainerState.values()} == set(
        ContainerState
    )
    kinds = {translate.event(pb.InstanceEvent(kind=v)).kind for v in pb.EventKind.values()}
    assert kinds == set(EventKind)


def test_an_unknown_state_from_a_newer_agent_reads_as_not_running() -> None:
    status = translate.status(pb.InstanceStatus(instance_id="i", state=99))  # type: ignore[arg-type]
    assert status.state is ContainerState.UNSPECIFIED and not status.runs


def test_a_heartbeat_keeps_every_field_the_coordinator_reads() -> None:
    wire = pb.Heartbeat(
        sent_at_ms=1_700_000_000_500,
        engine_error="engine down",
        host=pb.HostMetrics(cpu_percent=12.5, memory_used_mib=100, memory_total_mib=200, load5=0.7),
        instances=[
            pb.InstanceStatus(
                instance_id="i",
                container_id="c",
                state=pb.CONTAINER_STATE_EXITED,
                exit_code=3,
                oom_killed=True,
                restarts=2,
                started_at_ms=5,
                health="unhealthy",
                rx_bytes=10,
                tx_bytes=20,
                rx_mbps=1.5,
                tx_mbps=2.5,
                remove_at_ms=9,
                limit_error="no tc",
            )
        ],
    )
    hb = translate.heartbeat(wire)
    assert hb.sent_at == pytest.approx(1_700_000_000.5) and hb.engine_error == "engine down"
    assert hb.host is not None and (hb.host.cpu_percent, hb.host.memory_total_mib, hb.host.load5) == (
        12.5,
        200,
        0.7,
    )
    (s,) = hb.instances
    assert (s.instance_id, s.container_id, s.state, s.exit_code, s.oom_killed, s.restarts) == (
        "i",
        "c",
        ContainerState.EXITED,
        3,
        True,
        2,
    )
    assert (s.started_at_ms, s.health, s.rx_bytes, s.tx_bytes, s.rx_mbps, s.tx_mbps) == (
        5,
        "unhealthy",
        10,
        20,
        1.5,
        2.5,
    )
    assert (s.remove_at_ms, s.limit_error) == (9, "no tc")
    assert translate.heartbeat(pb.Heartbeat()).host is None  # no metrics is not zero metrics


def test_a_command_carries_the_whole_spec_and_a_servers_identity() -> None:
    inst = make_instance(
        "i1",
        node_id="n1",
        state=InstanceState.STOPPED,
        allocations=(Allocation("a", "n1", "10.0.0.5", 30000, primary=True),),
    )
    identity = ServerIdentity("agent-1", "s3cret", "cakey", "cacert", "tlskey", "tlscert")
    out = translate.message(Command(CommandKind.SUSPEND, Workload(inst, identity), command_id="c1"))
    cmd = out.command
    assert (cmd.command_id, cmd.kind, cmd.instance_id) == ("c1", pb.COMMAND_KIND_SUSPEND, "i1")
    assert cmd.spec.desired_state == pb.DESIRED_STATE_STOPPED
    assert (cmd.spec.env["SERVER_IP"], cmd.spec.env["SERVER_PORT"]) == ("10.0.0.5", "30000")
    assert cmd.spec.env[translate.SECRET_VARIABLE] == "s3cret"
    assert dict(cmd.spec.files[0].contents)["key.pem"] == b"tlskey"
    assert [(p.bind_address, p.port, p.primary) for p in cmd.spec.ports] == [("10.0.0.5", 30000, True)]


def test_a_welcome_and_a_renewal() -> None:
    w = translate.message(Welcome("n1", 2.5, [Workload(make_instance("i1", node_id="n1"))], ["gone"])).welcome
    assert (w.node_id, w.heartbeat_interval_ms, [d.instance_id for d in w.desired], list(w.remove)) == (
        "n1",
        2500,
        ["i1"],
        ["gone"],
    )
    assert translate.message(Renewed(b"pem")).renewed.certificate_pem == b"pem"
