"""The agent door: pinned join tokens, mutual TLS, renewal and revocation, against a real coordinator and
real agent processes."""

from __future__ import annotations

import datetime as dt
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from agent.identity import new_key_and_csr
from bench.daemons import AgentProcess, Api, CoordinatorProcess, create_node, node_view, port_block, wait_for
from coordinator.security.pki import CertificateAuthority
from protos import moorage_pb2 as pb
from protos import moorage_pb2_grpc as pb_grpc
from tests.dockerenv import require_docker

CERT_LIFETIME_S = 6


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoordinatorProcess]:
    require_docker()
    proc = CoordinatorProcess(
        tmp_path_factory.mktemp("identity") / "coordinator",
        extra={"enrollment": {"certificate_lifetime_s": CERT_LIFETIME_S}},
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.stop()


def start_agent(
    agents: list[AgentProcess], coordinator: CoordinatorProcess, data_dir: Path, token: str | None
) -> AgentProcess:
    agent = AgentProcess(data_dir, coordinator, token)
    agent.start()
    agents.append(agent)
    return agent


def exit_code(agent: AgentProcess, timeout: float = 20) -> int:
    assert agent.proc is not None
    try:
        return agent.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the agent did not exit:\n{agent.log()}") from None


def connect(coordinator: CoordinatorProcess, creds: grpc.ChannelCredentials | None) -> grpc.StatusCode | str:
    """Open a session as an agent would; the status code it fails with, or "welcome"."""
    target = f"127.0.0.1:{coordinator.endpoints['grpc_port']}"
    options = [("grpc.ssl_target_name_override", "moorage-coordinator")]
    channel = grpc.secure_channel(target, creds, options) if creds else grpc.insecure_channel(target)
    try:
        replies = pb_grpc.CoordinatorStub(channel).Connect(
            iter([pb.AgentMessage(hello=pb.Hello())]), timeout=5
        )
        first = next(replies)
        replies.cancel()
        return "welcome" if first.HasField("welcome") else "other"
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    finally:
        channel.close()


def client_creds(coordinator: CoordinatorProcess, node_id: str, lifetime_s: float) -> grpc.ChannelCredentials:
    """A client certificate from the coordinator's own CA (read from its data directory)."""
    ca = CertificateAuthority.load_or_create(coordinator.data_dir)
    key, csr = new_key_and_csr()
    issued = ca.sign_node(csr, node_id, dt.timedelta(seconds=lifetime_s))
    return grpc.ssl_channel_credentials(ca.cert_pem, key, issued.pem)


def online(api: Api, node_id: str) -> bool:
    view: dict[str, Any] = node_view(api, node_id)
    return bool(view["isOnline"] and view["connected"])


def test_a_token_pinning_another_ca_is_refused_before_the_secret_is_sent(
    coordinator: CoordinatorProcess, agents: list[AgentProcess], tmp_path: Path
) -> None:
    api = coordinator.api()
    node = create_node(api, port_block(1), name="pinned")
    parts = node["joinToken"].split("::")
    wrong = "::".join([parts[0], "0" * 64, *parts[2:]])
    agent = start_agent(agents, coordinator, tmp_path / "wrong-ca", wrong)
    assert exit_code(agent) == 78
    assert "refusing to send the token" in agent.log()
    # The token was never sent, so it still works.
    assert node_view(api, node["id"])["status"] == "awaiting_enrollment"
    good = start_agent(agents, coordinator, tmp_path / "right-ca", node["joinToken"])
    wait_for(lambda: online(api, node["id"]), 20, "the node to enroll with the right token")
    # One token, one enrollment: a second host presenting it is refused.
    again = start_agent(agents, coordinator, tmp_path / "second-host", node["joinToken"])
    assert exit_code(again) == 78
    assert "already used" in again.log()
    assert good.running


def test_the_join_token_alone_enrolls_and_the_data_directory_alone_comes_back(
    coordinator: CoordinatorProcess, agents: list[AgentProcess], tmp_path: Path
) -> None:
    """``moorage-agent --join-token T``, no addresses given: the token says where to enroll and where the
    sessions are, and the agent keeps the addresses with its identity for the starts after."""
    api = coordinator.api()
    node = create_node(api, port_block(1), name="token-only")
    first = AgentProcess(tmp_path / "bare", coordinator, node["joinToken"], addressed=False)
    agents.append(first)
    first.start()
    assert first.proc is not None
    pid = first.proc.pid
    wait_for(lambda: online(api, node["id"]), 20, "the node to enroll from the token alone")
    # Enrolled, the agent started afresh in the same process (one pid for systemd), so it does not carry
    # what enrollment loaded for its whole life (tests/unit/test_agent_footprint.py: what it loads).
    assert first.running and first.proc.pid == pid
    assert "enrolled; starting afresh" in first.log()
    first.stop()
    again = AgentProcess(tmp_path / "bare", coordinator, None, addressed=False)
    agents.append(again)
    again.start()
    wait_for(lambda: online(api, node["id"]), 20, "the node back from its data directory alone")
    # With neither addresses nor a stored list, the agent says what it lacks and stops (78).
    lost = AgentProcess(tmp_path / "nothing", coordinator, None, addressed=False)
    agents.append(lost)
    lost.start()
    assert exit_code(lost) == 78
    assert "no coordinator address" in lost.log()


def test_a_fresh_token_voids_the_old_one(
    coordinator: CoordinatorProcess, agents: list[AgentProcess], tmp_path: Path
) -> None:
    api = coordinator.api()
    node = create_node(api, port_block(1), name="reissued")
    r = api.post(f"/api/nodes/{node['id']}/join-token")
    assert r.status == 201 and r.body["joinToken"] != node["joinToken"]
    assert r.body["joinToken"] in r.body["agentCommand"]
    old = start_agent(agents, coordinator, tmp_path / "old", node["joinToken"])
    assert exit_code(old) == 78
    assert "not known" in old.log()
    start_agent(agents, coordinator, tmp_path / "new", r.body["joinToken"])
    wait_for(lambda: online(api, node["id"]), 20, "the node to enroll with the fresh token")
    assert api.post("/api/nodes/00000000-0000-0000-0000-000000000000/join-token").status == 404


def test_an_expired_token_is_refused(tmp_path: Path, agents: list[AgentProcess]) -> None:
    short = CoordinatorProcess(tmp_path / "short-tokens", extra={"enrollment": {"join_token_ttl_s": 1}})
    short.start()
    try:
        node = create_node(short.api(), port_block(1), name="late")
        wait_for(
            lambda: node["joinTokenExpiresAt"] < dt.datetime.now(dt.UTC).isoformat(), 5, "the token to expire"
        )
        agent = start_agent(agents, short, tmp_path / "late-agent", node["joinToken"])
        assert exit_code(agent) == 78
        assert "expired" in agent.log()
    finally:
        short.stop()


def test_only_mutual_tls_with_a_live_certificate_of_ours_opens_a_session(
    coordinator: CoordinatorProcess, tmp_path: Path
) -> None:
    ca = CertificateAuthority.load_or_create(coordinator.data_dir)
    assert connect(coordinator, None) == grpc.StatusCode.UNAVAILABLE  # plaintext
    assert connect(coordinator, grpc.ssl_channel_credentials(ca.cert_pem)) == grpc.StatusCode.UNAVAILABLE
    stranger = CertificateAuthority.load_or_create(tmp_path / "other-ca")
    key, csr = new_key_and_csr()
    foreign = stranger.sign_node(csr, "node-x", dt.timedelta(days=1))
    assert connect(coordinator, grpc.ssl_channel_credentials(ca.cert_pem, key, foreign.pem)) == (
        grpc.StatusCode.UNAVAILABLE
    )
    # Our CA, but a node the coordinator does not know: through TLS, refused by the serial check.
    assert connect(coordinator, client_creds(coordinator, "node-x", 60)) == grpc.StatusCode.PERMISSION_DENIED
    expiring = client_creds(coordinator, "node-x", 1)
    wait_for(
        lambda: connect(coordinator, expiring) == grpc.StatusCode.UNAVAILABLE, 10, "the certificate to expire"
    )


def test_renewal_keeps_the_node_connected_past_its_first_certificate(
    coordinator: CoordinatorProcess, agents: list[AgentProcess], tmp_path: Path
) -> None:
    api = coordinator.api()
    node = create_node(api, port_block(1), name="renewing")
    data = tmp_path / "renewing"
    agent = start_agent(agents, coordinator, data, node["joinToken"])
    wait_for(lambda: online(api, node["id"]), 20, "the node to enroll")
    first = (data / "node.pem").read_bytes()
    first_key = (data / "node.key").read_bytes()
    wait_for(
        lambda: (data / "node.pem").read_bytes() != first, CERT_LIFETIME_S, "the certificate to be renewed"
    )
    assert (data / "node.key").read_bytes() == first_key  # renewal keeps the key
    # The old certificate no longer opens a session; the renewed one does.
    old = grpc.ssl_channel_credentials((data / "ca.pem").read_bytes(), first_key, first)
    assert connect(coordinator, old) == grpc.StatusCode.PERMISSION_DENIED
    # Past the first certificate's end the session still works.
    first_end = x509.load_pem_x509_certificate(first).not_valid_after_utc.timestamp()
    time.sleep(max(0.0, first_end - time.time()) + 1.0)
    assert online(api, node["id"]) and agent.running
    agent.stop()
    start_agent(agents, coordinator, data, None)
    wait_for(lambda: online(api, node["id"]), 20, "the node to reconnect with its renewed certificate")


def test_deleting_a_node_closes_its_session_and_voids_its_certificate(
    coordinator: CoordinatorProcess, agents: list[AgentProcess], tmp_path: Path
) -> None:
    api = coordinator.api()
    node = create_node(api, port_block(1), name="doomed")
    data = tmp_path / "doomed"
    agent = start_agent(agents, coordinator, data, node["joinToken"])
    wait_for(lambda: online(api, node["id"]), 20, "the node to enroll")
    r = api.delete("/api/nodes/delete", {"nodeId": node["id"]})
    assert r.status == 201 and r.body["message"] == "Node deleted"
    assert exit_code(agent) == 78
    assert "refused this node" in agent.log()
    creds = grpc.ssl_channel_credentials(
        (data / "ca.pem").read_bytes(), (data / "node.key").read_bytes(), (data / "node.pem").read_bytes()
    )
    assert connect(coordinator, creds) == grpc.StatusCode.PERMISSION_DENIED
    assert api.delete("/api/nodes/delete", {"nodeId": node["id"]}).status == 400
