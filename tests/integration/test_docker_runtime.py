"""DockerRuntime against a real engine and the local busybox test image."""

from __future__ import annotations

import asyncio
import re
import threading
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import docker
import psutil
import pytest

from agent.runtime.base import (
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_NODE,
    ContainerEvent,
    ContainerNotFound,
    ContainerSpec,
    ContainerStatus,
    EventKind,
    ImageNotFound,
    PortBinding,
    PullPolicy,
    Runtime,
    RuntimeFailure,
)
from agent.runtime.docker import DockerEvents, DockerRuntime, container_event, parse_timestamp, split_image
from agent.runtime.engine_api import IDLE_CONNECTIONS
from bench.daemons import TEST_IMAGE
from tests.dockerenv import free_port, require_docker

pytestmark = pytest.mark.docker

# PID 1 ignores SIGTERM unless it traps it; this one does and exits 3, so a graceful stop is observable.
TRAPPING = ["sh", "-c", "trap 'exit 3' TERM; while :; do sleep 0.1; done"]


@pytest.fixture
def node_id() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def engine(node_id: str) -> Iterator[Any]:
    """The SDK's low-level client, to check what the engine really did; removes the test's containers."""
    require_docker()
    client = docker.from_env(timeout=30)
    try:
        yield client.api
    finally:
        for summary in client.api.containers(all=True, filters={"label": [f"{LABEL_NODE}={node_id}"]}):
            client.api.remove_container(summary["Id"], v=True, force=True)
        client.close()


@pytest.fixture
async def runtime(engine: Any) -> AsyncIterator[DockerRuntime]:
    rt = DockerRuntime()
    try:
        yield rt
    finally:
        await rt.close()


def make_spec(node_id: str, **overrides: Any) -> ContainerSpec:
    values: dict[str, Any] = {
        "instance_id": str(uuid.uuid4()),
        "node_id": node_id,
        "name": "test",
        "image": TEST_IMAGE,
        "env": {},
        "memory_mib": 64,
        "cpu_percent": 0,
        "stop_timeout_s": 2,
        "labels": {"test.suite": "docker-runtime"},
    }
    values.update(overrides)
    return ContainerSpec(**values)


async def next_event(events: DockerEvents, kind: EventKind, container_id: str) -> ContainerEvent:
    """The next event of that kind for that container, skipping others; fails after 10 s."""

    async def wait() -> ContainerEvent:
        async for event in events:
            if event.kind is kind and event.container_id == container_id:
                return event
        raise AssertionError("event stream ended")

    return await asyncio.wait_for(wait(), timeout=10)


def http_get(port: int, deadline_s: float = 5.0) -> str:
    """GET / on the published port, retrying while httpd starts."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                return str(response.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_satisfies_protocol() -> None:
    rt: Runtime = DockerRuntime()  # mypy checks the structure; constructing it touches no engine
    assert rt is not None


async def test_unreachable_engine_is_runtime_failure(tmp_path: Path) -> None:
    """No engine needed: every call, and the event stream, fail with RuntimeFailure naming the address."""
    rt = DockerRuntime(f"unix://{tmp_path}/absent.sock")
    with pytest.raises(
        RuntimeFailure, match=f"cannot reach the docker engine at unix://{tmp_path}.*No such file"
    ):
        await rt.ping()
    events = rt.events("nowhere")
    with pytest.raises(RuntimeFailure, match="No such file"):
        await asyncio.wait_for(events.__anext__(), timeout=10)
    with pytest.raises(StopAsyncIteration):
        await events.__anext__()
    await rt.close()


async def test_bad_engine_address_fails_the_call() -> None:
    rt = DockerRuntime("ftp://docker.example")
    with pytest.raises(
        RuntimeFailure, match=re.escape("not a docker engine address: 'ftp://docker.example'")
    ):
        await rt.ping()
    await rt.close()


@pytest.mark.parametrize(
    ("action", "attributes", "expected"),
    [
        ("start", {}, (EventKind.STARTED, 0, "")),
        ("die", {"exitCode": "3"}, (EventKind.EXITED, 3, "")),
        ("oom", {}, (EventKind.OOM, 0, "")),
        ("destroy", {}, (EventKind.REMOVED, 0, "")),
        ("health_status: unhealthy", {}, (EventKind.HEALTH, 0, "unhealthy")),
        ("exec_start: sh -c true", {}, None),
        ("kill", {"signal": "9"}, None),
    ],
)
def test_container_event_mapping(
    action: str, attributes: dict[str, str], expected: tuple[EventKind, int, str] | None
) -> None:
    raw = {
        "Type": "container",
        "Action": action,
        "Actor": {"ID": "c1", "Attributes": {LABEL_INSTANCE: "i1", **attributes}},
        "time": 1700000000,
        "timeNano": 1700000000_250000000,
    }
    event = container_event(raw)
    if expected is None:
        assert event is None
        return
    assert event is not None
    assert (event.kind, event.exit_code, event.detail) == expected
    assert (event.container_id, event.instance_id, event.at) == ("c1", "i1", 1700000000.25)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("busybox", ("busybox", "")),
        ("busybox:1.36", ("busybox", "1.36")),
        ("registry.example:5000/team/app", ("registry.example:5000/team/app", "")),
        ("registry.example:5000/team/app:v2", ("registry.example:5000/team/app", "v2")),
        ("app@sha256:abc", ("app", "sha256:abc")),
    ],
)
def test_split_image(image: str, expected: tuple[str, str]) -> None:
    """As the docker CLI reads a reference: a registry's port is not a tag."""
    assert split_image(image) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0001-01-01T00:00:00Z", 0.0),
        ("", 0.0),
        ("1970-01-01T00:00:10.5Z", 10.5),
        ("2024-01-02T03:04:05.123456789Z", 1704164645.123456789),
        ("2024-01-02T05:04:05+02:00", 1704164645.0),
    ],
)
def test_parse_timestamp(value: str, expected: float) -> None:
    assert parse_timestamp(value) == pytest.approx(expected, abs=1e-6)


async def test_create_applies_limits_and_serves(runtime: DockerRuntime, engine: Any, node_id: str) -> None:
    port = free_port()
    spec = make_spec(
        node_id,
        memory_mib=64,
        cpu_percent=50,
        env={"SERVER_PORT": str(port)},
        ports=[PortBinding("127.0.0.1", port)],
        stop_signal="SIGINT",
        stop_timeout_s=7,
    )
    cid = await runtime.create(spec)
    attrs = engine.inspect_container(cid)
    host = attrs["HostConfig"]
    assert host["Memory"] == 64 * 1024 * 1024
    assert host["MemorySwap"] == 64 * 1024 * 1024  # no swap beyond the limit
    assert (host["CpuQuota"], host["CpuPeriod"]) == (50_000, 100_000)
    binding = [{"HostIp": "127.0.0.1", "HostPort": str(port)}]
    assert host["PortBindings"] == {f"{port}/tcp": binding, f"{port}/udp": binding}
    assert host["RestartPolicy"]["Name"] == "no"
    assert not host.get("Init")
    config = attrs["Config"]
    assert attrs["Name"] == f"/moorage-{spec.instance_id}"
    # The engine merges the image's labels in, so only ours are checked.
    assert (
        config["Labels"].items()
        >= {
            "test.suite": "docker-runtime",
            LABEL_INSTANCE: spec.instance_id,
            LABEL_NODE: node_id,
            LABEL_MANAGED: "true",
        }.items()
    )
    assert f"SERVER_PORT={port}" in config["Env"]
    assert (config["StopSignal"], config["StopTimeout"]) == ("SIGINT", 7)

    await runtime.start(cid)
    body = await asyncio.to_thread(http_get, port)
    assert "moorage-test-ok" in body


async def test_create_is_idempotent(runtime: DockerRuntime, engine: Any, node_id: str) -> None:
    spec = make_spec(node_id)
    first = await runtime.create(spec)
    assert await runtime.create(spec) == first
    # Two creates racing for a new instance: one wins the name, the other returns the winner's container.
    racing = make_spec(node_id)
    a, b = await asyncio.gather(runtime.create(racing), runtime.create(racing))
    assert a == b
    for instance in (spec.instance_id, racing.instance_id):
        found = engine.containers(all=True, filters={"label": [f"{LABEL_INSTANCE}={instance}"]})
        assert len(found) == 1


async def test_command_overrides_image_default(runtime: DockerRuntime, node_id: str) -> None:
    cid = await runtime.create(make_spec(node_id, command=["sh", "-c", "exit 7"]))
    await runtime.start(cid)
    for _ in range(100):
        info = await runtime.inspect(cid)
        if info.status is ContainerStatus.EXITED:
            break
        await asyncio.sleep(0.05)
    assert (info.status, info.exit_code) == (ContainerStatus.EXITED, 7)


async def test_list_and_inspect_running(runtime: DockerRuntime, node_id: str) -> None:
    spec = make_spec(node_id, command=TRAPPING)
    cid = await runtime.create(spec)
    before = time.time()
    await runtime.start(cid)
    infos = await runtime.list(node_id)
    assert [info.container_id for info in infos] == [cid]
    info = infos[0]
    assert info.status is ContainerStatus.RUNNING
    assert info.pid > 0
    assert (info.instance_id, info.node_id, info.image) == (spec.instance_id, node_id, TEST_IMAGE)
    assert info.name == f"moorage-{spec.instance_id}"
    assert before - 2 < info.started_at < time.time() + 2
    assert (info.restart_count, info.health, info.oom_killed) == (0, "", False)
    assert info.labels[LABEL_MANAGED] == "true"
    assert await runtime.list(f"other-{node_id}") == []
    # One instance's container, found by its labels without inspecting the others.
    other = await runtime.create(make_spec(node_id))
    assert await runtime.find(node_id, spec.instance_id) == info
    assert (await runtime.find(node_id, spec.instance_id)) != (await runtime.inspect(other))
    assert await runtime.find(f"other-{node_id}", spec.instance_id) is None
    assert await runtime.find(node_id, "no-such-instance") is None


async def test_created_container_was_never_started(runtime: DockerRuntime, node_id: str) -> None:
    info = await runtime.inspect(await runtime.create(make_spec(node_id)))
    assert (info.status, info.pid, info.started_at) == (ContainerStatus.CREATED, 0, 0.0)


async def test_stop_remove_and_missing_container(runtime: DockerRuntime, node_id: str) -> None:
    cid = await runtime.create(make_spec(node_id, command=TRAPPING))
    await runtime.start(cid)
    await runtime.stop(cid, timeout_s=5)
    info = await runtime.inspect(cid)
    assert (info.status, info.exit_code, info.pid) == (ContainerStatus.EXITED, 3, 0)  # trapped SIGTERM
    await runtime.stop(cid, timeout_s=1)  # already stopped: fine
    with pytest.raises(RuntimeFailure, match="not running"):
        await runtime.kill(cid)
    await runtime.remove(cid)
    with pytest.raises(ContainerNotFound):
        await runtime.inspect(cid)
    await runtime.remove(cid)  # already gone: fine
    with pytest.raises(ContainerNotFound):
        await runtime.start(cid)
    with pytest.raises(ContainerNotFound):
        await runtime.stop(cid, timeout_s=1)


async def test_calls_about_many_containers_share_a_few_engine_connections(runtime: DockerRuntime) -> None:
    """Eighty calls about eighty containers, all at once, leave no more than the kept idle connections to
    the engine open (docker-py kept a pool per request path: 26 connections for a few dozen containers)."""
    await runtime.ping()
    before = len(psutil.Process().net_connections(kind="unix"))

    async def missing() -> None:
        with pytest.raises(ContainerNotFound):
            await runtime.inspect(uuid.uuid4().hex)

    await asyncio.gather(*(missing() for _ in range(80)))
    assert len(psutil.Process().net_connections(kind="unix")) - before <= IDLE_CONNECTIONS
    for _ in range(20):  # one after the other: one connection serves them all
        await missing()
    assert len(psutil.Process().net_connections(kind="unix")) - before <= IDLE_CONNECTIONS


async def test_events_started_exited_removed(runtime: DockerRuntime, node_id: str) -> None:
    events = runtime.events(node_id)
    try:
        spec = make_spec(node_id)
        cid = await runtime.create(spec)
        await runtime.start(cid)
        started = await next_event(events, EventKind.STARTED, cid)
        assert started.instance_id == spec.instance_id
        assert abs(started.at - time.time()) < 30
        await runtime.kill(cid, "SIGKILL")
        exited = await next_event(events, EventKind.EXITED, cid)
        assert exited.exit_code == 137
        await runtime.remove(cid)
        await next_event(events, EventKind.REMOVED, cid)
    finally:
        await events.aclose()
    with pytest.raises(StopAsyncIteration):
        await events.__anext__()


async def test_oom_kill_is_reported(runtime: DockerRuntime, node_id: str) -> None:
    """dd with a 64 MiB block in a 16 MiB container: the kernel kills it and the engine says so."""
    events = runtime.events(node_id)
    try:
        spec = make_spec(node_id, memory_mib=16, command=["dd", "if=/dev/zero", "of=/dev/null", "bs=64M"])
        cid = await runtime.create(spec)
        await runtime.start(cid)
        oom = await next_event(events, EventKind.OOM, cid)
        assert oom.instance_id == spec.instance_id
        assert (await next_event(events, EventKind.EXITED, cid)).exit_code == 137
    finally:
        await events.aclose()
    info = await runtime.inspect(cid)
    assert (info.status, info.oom_killed, info.exit_code) == (ContainerStatus.EXITED, True, 137)


async def test_events_only_for_this_node(runtime: DockerRuntime, engine: Any, node_id: str) -> None:
    """A container of another node is not reported; subscribing before acting loses nothing."""
    other = f"{node_id}-other"
    events = runtime.events(node_id)
    try:
        foreign = await runtime.create(make_spec(other, command=["true"]))
        try:
            await runtime.start(foreign)
            mine = await runtime.create(make_spec(node_id, command=["true"]))
            await runtime.start(mine)
            first = await next_event(events, EventKind.STARTED, mine)
            assert first.container_id == mine
        finally:
            engine.remove_container(foreign, force=True)
    finally:
        await events.aclose()


async def test_close_ends_streams_and_their_connections(engine: Any, node_id: str) -> None:
    """A stream being read when the runtime closes ends, and no connection to the engine is left open."""
    before = len(psutil.Process().net_connections(kind="unix"))
    rt = DockerRuntime()
    events = rt.events(node_id)
    reading = asyncio.create_task(events.__anext__())
    cid = await rt.create(make_spec(node_id))
    logs = rt.logs(cid, tail=10, follow=True)
    following = asyncio.create_task(logs.__anext__())
    await asyncio.sleep(0.5)  # both streams open and waiting
    assert len(psutil.Process().net_connections(kind="unix")) - before >= 2
    await rt.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(reading, timeout=5)
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(following, timeout=5)
    assert [event async for event in events] == []
    await asyncio.sleep(0.1)
    assert len(psutil.Process().net_connections(kind="unix")) == before
    assert not [t.name for t in threading.enumerate() if t.name.startswith("docker")]
    with pytest.raises(RuntimeFailure, match="closed"):
        await rt.ping()
    with pytest.raises(RuntimeFailure, match="closed"):
        rt.events(node_id)


async def test_ensure_image_present(runtime: DockerRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    pulls: list[str] = []

    async def pull(image: str) -> None:
        pulls.append(image)

    monkeypatch.setattr(runtime, "_pull", pull)
    assert await runtime.has_image(TEST_IMAGE)
    await runtime.ensure_image(TEST_IMAGE, PullPolicy.NEVER)
    await runtime.ensure_image(TEST_IMAGE, PullPolicy.MISSING)
    assert pulls == []
    await runtime.ensure_image(TEST_IMAGE, PullPolicy.ALWAYS)
    assert pulls == [TEST_IMAGE]


async def test_ensure_image_never_does_not_pull(
    runtime: DockerRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = f"moorage-test/absent-{uuid.uuid4().hex[:8]}:latest"

    async def no_pull(image: str) -> None:
        raise AssertionError("pulled despite policy never")

    monkeypatch.setattr(runtime, "_pull", no_pull)
    assert not await runtime.has_image(image)
    with pytest.raises(ImageNotFound) as caught:
        await runtime.ensure_image(image, PullPolicy.NEVER)
    assert str(caught.value) == f"image {image!r} is not present on this host and the pull policy is 'never'"


async def test_ensure_image_missing_reports_engine_error(runtime: DockerRuntime, engine: Any) -> None:
    repository = f"moorage-test/absent-{uuid.uuid4().hex[:8]}"
    with pytest.raises(docker.errors.APIError) as direct:
        engine.pull(repository, tag="latest")
    with pytest.raises(ImageNotFound) as caught:
        await runtime.ensure_image(f"{repository}:latest", PullPolicy.MISSING)
    assert direct.value.explanation
    assert direct.value.explanation in str(caught.value)


async def test_create_with_missing_image(runtime: DockerRuntime, node_id: str) -> None:
    with pytest.raises(ImageNotFound, match="No such image"):
        await runtime.create(make_spec(node_id, image=f"moorage-test/absent-{uuid.uuid4().hex[:8]}:latest"))


async def test_logs_tail_then_follow(runtime: DockerRuntime, node_id: str) -> None:
    """Both of the container's streams, the last lines first, then what it writes while followed."""
    script = "for i in 1 2 3; do echo out$i; echo err$i >&2; done; sleep 1; echo later; sleep 30"
    cid = await runtime.create(make_spec(node_id, command=["sh", "-c", script]))
    await runtime.start(cid)
    await asyncio.sleep(0.5)
    logs = runtime.logs(cid, tail=2, follow=True)
    seen = b""
    try:
        async with asyncio.timeout(10):
            async for chunk in logs:
                seen += chunk
                if b"later" in seen:
                    break
    finally:
        await logs.aclose()
    # The engine orders stdout against stderr by its own clock: which two lines are last may vary.
    *tail, last = seen.split()
    assert len(tail) == 2 and set(tail) <= {b"out2", b"err2", b"out3", b"err3"} and last == b"later"
    whole = runtime.logs(cid, tail=-1, follow=False)
    lines = b"".join([chunk async for chunk in whole]).split()
    assert sorted(lines) == [b"err1", b"err2", b"err3", b"later", b"out1", b"out2", b"out3"]
    assert [line for line in lines if line.startswith(b"out")] == [b"out1", b"out2", b"out3"]


async def test_logs_of_a_missing_container(runtime: DockerRuntime) -> None:
    with pytest.raises(RuntimeFailure, match="the container is gone"):
        await runtime.logs(uuid.uuid4().hex, tail=10, follow=False).__anext__()


async def test_streams_closed_while_they_open_end_and_let_go(runtime: DockerRuntime, node_id: str) -> None:
    """aclose() while the first read is still opening the stream: the read ends, the connection closes."""
    cid = await runtime.create(make_spec(node_id))
    before = len(psutil.Process().net_connections(kind="unix"))
    for stream in (runtime.events(node_id), runtime.logs(cid, tail=1, follow=True)):
        reading = asyncio.create_task(stream.__anext__())
        await asyncio.sleep(0)  # the open is under way
        await stream.aclose()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(reading, timeout=5)
    await asyncio.sleep(0.1)
    assert len(psutil.Process().net_connections(kind="unix")) <= before
