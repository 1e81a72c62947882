"""The bandwidth cap's pieces that need no kernel: bucket size, finding the container's host-side veth, and
the agent reporting a cap it could not set (in its heartbeats) while the container keeps running."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.executor import Executor
from agent.reconcile import Desired
from agent.runtime.base import ContainerSpec, PullPolicy
from agent.runtime.memory import MemoryRuntime
from agent.shaping import ShapingError, burst_bytes, host_device, peer_index, tbf
from agent.state import Order


def test_bucket_holds_20ms_and_at_least_32k() -> None:
    assert burst_bytes(8) == 32 * 1024
    assert burst_bytes(1000) == 1000 * 1_000_000 // 8 // 50
    assert tbf("eth0", 8)[-6:] == ["rate", "8mbit", "burst", str(32 * 1024), "latency", "50ms"]


def test_host_side_peer_from_ip_link() -> None:
    assert peer_index("5: eth0@if6: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc tbf") == 6
    links = "1: lo: <LOOPBACK>\n6: vethab12cd@if5: <BROADCAST> mtu 1500\n7: docker0: <NO-CARRIER>\n"
    assert host_device(links, 6) == "vethab12cd"
    with pytest.raises(ShapingError):
        peer_index("5: eth0: <BROADCAST>")
    with pytest.raises(ShapingError):
        host_device(links, 42)


async def test_a_refused_cap_is_reported_and_the_container_runs() -> None:
    async def refuse(netns: str, mbps: int) -> None:
        raise ShapingError("tc: Operation not permitted")

    runtime = MemoryRuntime()
    manager = Executor(runtime, "n1", PullPolicy.MISSING, lambda _r: None, shaper=refuse)
    spec = ContainerSpec(
        instance_id="i-1",
        node_id="n1",
        name="i-1",
        image="moorage-test/busybox:latest",
        env={},
        memory_mib=64,
        cpu_percent=0,
        bandwidth_mbps=8,
    )
    result = await manager.command(Order.DEPLOY, "i-1", Desired(spec, running=True))
    assert result.ok, result.error
    assert manager.limit_errors["i-1"] == "bandwidth cap of 8 Mbps not in force: tc: Operation not permitted"
    assert [c.status.value for c in runtime.containers.values()] == ["running"]
    # Without a cap there is nothing to report.
    await manager.command(Order.RESTART, "i-1", Desired(replace(spec, bandwidth_mbps=0), running=True))
    assert "i-1" not in manager.limit_errors
