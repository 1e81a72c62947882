"""The Runtime backed by a Docker engine through the (synchronous) docker SDK.

Every SDK call runs on a small private thread pool so the agent's event loop never waits on the engine; the
event stream, which blocks for its whole life, gets a thread of its own. Containers are found again by their
labels, so an agent restart re-adopts them without touching them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import docker
import docker.errors
from docker.transport import UnixHTTPAdapter
from docker.utils import parse_repository_tag

from agent.runtime.base import (
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_NODE,
    ContainerEvent,
    ContainerInfo,
    ContainerNotFound,
    ContainerSpec,
    ContainerStatus,
    EventKind,
    ImageNotFound,
    PullPolicy,
    RuntimeFailure,
)
from agent.runtime.docker_logs import DockerLogs

if TYPE_CHECKING:
    from agent.runtime.base import Runtime

P = ParamSpec("P")
T = TypeVar("T")

_NAME_PREFIX = "moorage-"
_ACTIONS = {
    "start": EventKind.STARTED,
    "die": EventKind.EXITED,
    "oom": EventKind.OOM,
    "destroy": EventKind.REMOVED,
    "health_status": EventKind.HEALTH,
}
_CPU_PERIOD_US = 100_000
# The engine writes "0001-01-01T00:00:00Z" for never; fractions have up to 9 digits (datetime keeps 6).
_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def _translate(exc: Exception) -> RuntimeFailure:
    """Map SDK errors onto the runtime's, keeping the engine's own words for the operator."""
    if isinstance(exc, RuntimeFailure):
        return exc
    explanation = getattr(exc, "explanation", None) or str(exc)
    if isinstance(exc, docker.errors.ImageNotFound):
        return ImageNotFound(explanation)
    if isinstance(exc, docker.errors.NotFound):
        return ContainerNotFound(explanation)
    return RuntimeFailure(explanation)


def parse_timestamp(value: str) -> float:
    """RFC 3339 (nanoseconds allowed) to unix seconds; the engine's zero time and garbage become 0."""
    match = _TIMESTAMP.match(value or "")
    if match is None or value.startswith("0001-01-01"):
        return 0.0
    whole, fraction, zone = match.groups()
    base = datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone)).timestamp()
    return base + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)


def container_info(attrs: Mapping[str, Any]) -> ContainerInfo:
    """Build a ContainerInfo from the engine's inspect document."""
    state: Mapping[str, Any] = attrs.get("State") or {}
    config: Mapping[str, Any] = attrs.get("Config") or {}
    labels: dict[str, str] = dict(config.get("Labels") or {})
    try:
        status = ContainerStatus(state.get("Status", ""))
    except ValueError:  # a state newer than this code: treat as not running rather than guess
        status = ContainerStatus.DEAD
    health: Mapping[str, Any] = state.get("Health") or {}
    return ContainerInfo(
        container_id=attrs["Id"],
        instance_id=labels.get(LABEL_INSTANCE, ""),
        node_id=labels.get(LABEL_NODE, ""),
        name=str(attrs.get("Name", "")).lstrip("/"),
        image=str(config.get("Image", "")),
        status=status,
        exit_code=int(state.get("ExitCode") or 0),
        oom_killed=bool(state.get("OOMKilled")),
        pid=int(state.get("Pid") or 0),
        started_at=parse_timestamp(str(state.get("StartedAt", ""))),
        restart_count=int(attrs.get("RestartCount") or 0),
        health=str(health.get("Status", "")),
        labels=labels,
        netns=str((attrs.get("NetworkSettings") or {}).get("SandboxKey") or ""),
    )


def container_event(raw: Mapping[str, Any]) -> ContainerEvent | None:
    """Map one decoded engine event to ours; None for the actions the agent does not track."""
    action = str(raw.get("Action") or raw.get("status") or "")
    actor: Mapping[str, Any] = raw.get("Actor") or {}
    attributes: Mapping[str, str] = actor.get("Attributes") or {}
    name, _, detail = action.partition(":")  # "health_status: healthy" carries the health in the action
    kind = _ACTIONS.get(name)
    if kind is None:
        return None
    exit_code = int(attributes.get("exitCode") or 0) if kind is EventKind.EXITED else 0
    time_nano = raw.get("timeNano")
    at = (
        time_nano // 10**9 + time_nano % 10**9 / 1e9
        if isinstance(time_nano, int)
        else float(raw.get("time") or 0)
    )
    return ContainerEvent(
        kind=kind,
        container_id=str(actor.get("ID") or raw.get("id") or ""),
        instance_id=attributes.get(LABEL_INSTANCE, ""),
        exit_code=exit_code,
        at=at,
        detail=detail.strip(),
    )


class _StreamHandle:
    """What the reader thread and the consumer share: the open HTTP stream and whether to stop."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stream: Any = None
        self.closed = False

    def close(self) -> None:
        with self.lock:
            self.closed = True
            stream, self.stream = self.stream, None
        if stream is not None:
            with contextlib.suppress(OSError, docker.errors.DockerException):
                stream.close()  # shuts the socket down, which wakes the blocked read in the thread


_Item = ContainerEvent | RuntimeFailure


def _deliver(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[_Item], item: _Item) -> bool:
    """Hand an item to the loop's thread; False once the loop is closed and nobody listens any more."""
    try:
        loop.call_soon_threadsafe(queue.put_nowait, item)
    except RuntimeError:
        return False
    return True


def _pump(
    client: Callable[[], Any],
    filters: dict[str, Any],
    since: str,
    handle: _StreamHandle,
    loop: asyncio.AbstractEventLoop,
    queue: asyncio.Queue[_Item],
) -> None:
    """Thread body: read the blocking event stream and hand each event to the loop.

    It holds no reference to the consumer's iterator, so dropping that iterator can still close the stream.
    """
    end = RuntimeFailure("the docker event stream ended")
    stream: Any = None
    try:
        stream = client().api.events(decode=True, filters=filters, since=since)
        with handle.lock:
            accepted = not handle.closed
            if accepted:
                handle.stream = stream
        if not accepted:  # closed while we were connecting
            stream.close()
            return
        for raw in stream:
            event = container_event(raw)
            if event is not None and not _deliver(loop, queue, event):
                return
    except Exception as exc:
        end = _translate(exc)
    finally:
        response = getattr(stream, "_response", None)
        if response is not None:
            response.close()  # drop the connection so no socket is left dangling
    _deliver(loop, queue, end)


class DockerEvents:
    """Async iterator over one node's container events.

    Subscribes with ``since`` = the moment ``events()`` was called, so the engine replays anything that
    happened while the thread was still connecting. Ends with RuntimeFailure when the engine drops the
    stream (the caller resubscribes and re-lists); ``aclose()`` stops the thread.
    """

    def __init__(self, client: Callable[[], Any], node_id: str, since_ns: int) -> None:
        self._handle = _StreamHandle()
        loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._done = False
        filters = {"label": [f"{LABEL_NODE}={node_id}"], "type": "container"}
        since = f"{since_ns // 1_000_000_000}.{since_ns % 1_000_000_000:09d}"
        self._thread = threading.Thread(
            target=_pump,
            args=(client, filters, since, self._handle, loop, self._queue),
            name=f"docker-events-{node_id}",
            daemon=True,  # a wedged engine connection must not keep the process alive
        )
        self._thread.start()

    def __aiter__(self) -> DockerEvents:
        return self

    async def __anext__(self) -> ContainerEvent:
        if self._done:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, ContainerEvent):
            return item
        self._done = True
        if self._handle.closed:
            raise StopAsyncIteration
        raise item

    async def aclose(self) -> None:
        self._done = True
        self._handle.close()
        await asyncio.to_thread(self._thread.join, 5.0)

    def __del__(self) -> None:
        # A consumer that broke out of ``async for`` and dropped us still stops the thread.
        handle = getattr(self, "_handle", None)
        if handle is not None:
            handle.close()


class DockerRuntime:
    """Runtime on a Docker engine (unix socket or ``base_url``); see ``agent.runtime.base.Runtime``."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        max_workers: int = 8,
        timeout_s: int = 60,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        """``observe``: told (call name, seconds) after every engine call, from the call's worker thread."""
        self._base_url = base_url
        self._observe = observe
        self._timeout_s = timeout_s
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="docker")
        self._client_lock = threading.Lock()
        self._client: Any = None
        self._streams: weakref.WeakSet[DockerEvents] = weakref.WeakSet()
        self._closed = False

    def _docker(self) -> Any:
        """The SDK client, made lazily in a worker thread: constructing it asks the engine for its version."""
        with self._client_lock:
            if self._closed:
                raise RuntimeFailure("the docker runtime is closed")
            if self._client is None:
                if self._base_url is None:
                    self._client = docker.from_env(timeout=self._timeout_s)
                else:
                    self._client = docker.DockerClient(base_url=self._base_url, timeout=self._timeout_s)
                _tune_for_unix_socket(self._client)
            return self._client

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._closed:
            raise RuntimeFailure("the docker runtime is closed")
        loop = asyncio.get_running_loop()
        call = functools.partial(fn, *args, **kwargs)
        if self._observe is not None:
            call = functools.partial(_timed, self._observe, getattr(fn, "__name__", "call").lstrip("_"), call)
        try:
            return await loop.run_in_executor(self._executor, call)
        except (docker.errors.DockerException, OSError) as exc:  # requests' errors are OSErrors
            raise _translate(exc) from exc

    # -- images ---------------------------------------------------------------------------------------

    async def ping(self) -> None:
        await self._run(lambda: self._docker().api.ping())

    def _has_image(self, image: str) -> bool:
        try:
            self._docker().api.inspect_image(image)
        except docker.errors.NotFound:
            return False
        return True

    async def has_image(self, image: str) -> bool:
        return await self._run(self._has_image, image)

    def _images(self) -> list[str]:
        return sorted({tag for img in self._docker().api.images() for tag in (img.get("RepoTags") or [])})

    async def images(self) -> list[str]:
        return await self._run(self._images)

    def _pull(self, image: str) -> None:
        repository, tag = parse_repository_tag(image)
        try:
            # Without a tag the API would pull every tag of the repository; the CLI means "latest".
            for line in self._docker().api.pull(repository, tag=tag or "latest", stream=True, decode=True):
                if isinstance(line, dict) and line.get("error"):
                    raise ImageNotFound(str(line["error"]))
        except (docker.errors.DockerException, OSError) as exc:
            raise ImageNotFound(_translate(exc).args[0]) from exc

    async def ensure_image(self, image: str, policy: PullPolicy) -> None:
        if policy is PullPolicy.ALWAYS or not await self.has_image(image):
            if policy is PullPolicy.NEVER:
                raise ImageNotFound(
                    f"image {image!r} is not present on this host and the pull policy is 'never'"
                )
            await self._run(self._pull, image)

    # -- containers -----------------------------------------------------------------------------------

    def _find(self, instance_id: str) -> str | None:
        found = self._docker().api.containers(
            all=True, filters={"label": [f"{LABEL_INSTANCE}={instance_id}"]}
        )
        return str(found[0]["Id"]) if found else None

    def _create(self, spec: ContainerSpec) -> str:
        existing = self._find(spec.instance_id)
        if existing is not None:
            return existing
        api = self._docker().api
        exposed: list[tuple[int, str]] = []
        bindings: dict[str, list[tuple[str, int]]] = {}
        for binding in spec.ports:
            for proto in ("tcp", "udp"):
                if (binding.port, proto) not in exposed:
                    exposed.append((binding.port, proto))
                published = bindings.setdefault(f"{binding.port}/{proto}", [])
                published.append((binding.bind_address, binding.port))
        limits: dict[str, Any] = {}
        if spec.memory_mib > 0:
            # Swap equal to memory: the container gets no swap beyond its limit.
            limits.update(mem_limit=f"{spec.memory_mib}m", memswap_limit=f"{spec.memory_mib}m")
        if spec.cpu_percent > 0:
            limits.update(cpu_period=_CPU_PERIOD_US, cpu_quota=spec.cpu_percent * _CPU_PERIOD_US // 100)
        host_config = api.create_host_config(
            port_bindings=bindings,
            binds={m.source: {"bind": m.target, "mode": "ro" if m.read_only else "rw"} for m in spec.mounts},
            restart_policy={"Name": "no"},  # the agent owns restarts and their back-off
            init=False,
            **limits,
        )
        labels = {
            **spec.labels,
            LABEL_INSTANCE: spec.instance_id,
            LABEL_NODE: spec.node_id,
            LABEL_MANAGED: "true",
        }
        try:
            created = api.create_container(
                image=spec.image,
                name=f"{_NAME_PREFIX}{spec.instance_id}",
                command=list(spec.command) or None,
                environment=dict(spec.env),
                labels=labels,
                ports=exposed,
                stop_signal=spec.stop_signal,
                stop_timeout=spec.stop_timeout_s,
                host_config=host_config,
            )
        except docker.errors.APIError as exc:
            if exc.status_code != 409:
                raise
            # The name is taken, most likely by a concurrent create of this instance. The engine reserves the
            # name before that container shows in a list, so give the other create a moment to finish.
            for _ in range(40):
                if (winner := self._find(spec.instance_id)) is not None:
                    return winner
                time.sleep(0.05)
            raise
        return str(created["Id"])

    async def create(self, spec: ContainerSpec) -> str:
        return await self._run(self._create, spec)

    async def start(self, container_id: str) -> None:
        await self._run(lambda: self._docker().api.start(container_id))

    async def stop(self, container_id: str, timeout_s: int) -> None:
        # The engine answers 304 for a container that is not running; the SDK treats that as success.
        await self._run(lambda: self._docker().api.stop(container_id, timeout=timeout_s))

    async def kill(self, container_id: str, signal: str = "SIGKILL") -> None:
        await self._run(lambda: self._docker().api.kill(container_id, signal=signal))

    def _remove(self, container_id: str) -> None:
        try:
            self._docker().api.remove_container(container_id, v=True, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            # A removal already under way (a redelivered command) ends the same way as ours would.
            if exc.status_code != 409 or "already in progress" not in str(exc.explanation):
                raise

    async def remove(self, container_id: str) -> None:
        await self._run(self._remove, container_id)

    def logs(self, container_id: str, tail: int, follow: bool) -> DockerLogs:
        return DockerLogs(self._docker, container_id, tail, follow)

    async def inspect(self, container_id: str) -> ContainerInfo:
        attrs = await self._run(lambda: self._docker().api.inspect_container(container_id))
        return container_info(attrs)

    def _list(self, node_id: str) -> list[ContainerInfo]:
        api = self._docker().api
        infos: list[ContainerInfo] = []
        # The list summaries lack the exit code and start time, so each container is inspected as well.
        for summary in api.containers(all=True, filters={"label": [f"{LABEL_NODE}={node_id}"]}):
            try:
                infos.append(container_info(api.inspect_container(summary["Id"])))
            except docker.errors.NotFound:  # removed between the list and the inspect
                continue
        return infos

    async def list(self, node_id: str) -> list[ContainerInfo]:
        return await self._run(self._list, node_id)

    # -- events and shutdown --------------------------------------------------------------------------

    def events(self, node_id: str) -> DockerEvents:
        """Must be called with the event loop running; events from this moment on are delivered."""
        if self._closed:
            raise RuntimeFailure("the docker runtime is closed")
        stream = DockerEvents(self._docker, node_id, time.time_ns())
        self._streams.add(stream)
        return stream

    def _shutdown(self) -> None:
        # No cancel_futures: a cancelled future would surface as CancelledError in a task nobody cancelled;
        # queued calls instead fail fast with "closed" from _docker().
        self._executor.shutdown(wait=True)
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for stream in list(self._streams):
            await stream.aclose()
        await asyncio.to_thread(self._shutdown)


if TYPE_CHECKING:
    _check: type[Runtime] = DockerRuntime


def _tune_for_unix_socket(client: Any) -> None:
    """Every request on the engine's unix socket shares one connection pool. docker-py keys its unix-socket
    pools by request path (a pool per container id and call, 25 kept, up to 10 connections each): an agent
    with a few dozen containers held 26 idle connections to the engine, 52 after an engine restart, each an
    fd here and in dockerd. Over TCP urllib3 already pools per host.

    Nor does a request on the socket look for proxies, .netrc or CA bundles in the environment (requests'
    ``trust_env``): none applies to a unix socket, and the lookup was a third of each call's CPU (0.99 →
    0.66 ms an inspect; a heartbeat inspects every container)."""
    adapter = client.api.adapters.get("http+docker://")
    if isinstance(adapter, UnixHTTPAdapter):
        per_path = adapter.get_connection
        adapter.get_connection = lambda url, proxies=None: per_path("http+docker://localhost", proxies)
        client.api.trust_env = False


def _timed(observe: Callable[[str, float], None], name: str, call: Callable[[], T]) -> T:
    began = time.perf_counter()
    try:
        return call()
    finally:
        observe(name, time.perf_counter() - began)
