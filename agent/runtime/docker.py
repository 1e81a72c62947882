"""The Runtime backed by a Docker engine, through the agent's own asyncio client of the engine API
(agent/runtime/engine_api.py): every call is a coroutine on the agent's loop, no thread waits on the engine.
Containers are found again by their labels, so an agent restart re-adopts them without touching them.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

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
from agent.runtime.engine_api import EngineClient, EngineError, path
from agent.runtime.engine_http import EngineStream, ProtocolError
from agent.runtime.registry_auth import auth_header

if TYPE_CHECKING:
    from agent.runtime.base import Runtime

_NAME_PREFIX = "moorage-"
_ACTIONS = {
    "start": EventKind.STARTED,
    "die": EventKind.EXITED,
    "oom": EventKind.OOM,
    "destroy": EventKind.REMOVED,
    "health_status": EventKind.HEALTH,
}
_CPU_PERIOD_US = 100_000
_MIB = 1024 * 1024
# The engine writes "0001-01-01T00:00:00Z" for never; fractions have up to 9 digits (datetime keeps 6).
_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


#: How the engine says an image is missing (docker-py read the same phrases).
_NO_IMAGE = ("no such image", "repository does not exist", "does not exist or no pull access", "platform")


def _translate(exc: BaseException) -> RuntimeFailure:
    """The engine's 404s become the runtime's not-found errors, keeping the engine's own words."""
    if isinstance(exc, EngineError) and exc.status == 404:
        if any(phrase in str(exc).lower() for phrase in _NO_IMAGE):
            return ImageNotFound(str(exc))
        return ContainerNotFound(str(exc))
    if isinstance(exc, RuntimeFailure):
        return exc
    return RuntimeFailure(str(exc) or type(exc).__name__)


def split_image(image: str) -> tuple[str, str]:
    """repository and tag (or digest) of an image reference, as the CLI reads it; "" when none is given."""
    if "@" in image:
        repository, _, digest = image.partition("@")
        return repository, digest
    repository, _, tag = image.rpartition(":")
    if not repository or "/" in tag:  # no tag, or the colon was a registry's port
        return image, ""
    return repository, tag


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


class DockerEvents:
    """Async iterator over one node's container events.

    Subscribes with ``since`` = the moment ``events()`` was called, so the engine replays anything that
    happened before the stream was open (it opens on the first read). Ends with RuntimeFailure when the
    engine drops the stream (the caller resubscribes and re-lists); after ``aclose()`` it just ends.
    """

    def __init__(self, engine: Callable[[], EngineClient], node_id: str, since_ns: int) -> None:
        self._engine = engine
        self._params = {
            "filters": {"label": [f"{LABEL_NODE}={node_id}"], "type": ["container"]},
            "since": f"{since_ns // 1_000_000_000}.{since_ns % 1_000_000_000:09d}",
        }
        self._stream: EngineStream | None = None
        self._events: AsyncIterator[Any] | None = None
        self._done = False

    def __aiter__(self) -> DockerEvents:
        return self

    async def __anext__(self) -> ContainerEvent:
        if self._done:
            raise StopAsyncIteration
        try:
            if self._events is None:
                stream = await self._engine().stream("GET", "/events", self._params)
                if self._done:  # closed while it was opening
                    stream.close()
                    raise StopAsyncIteration
                self._stream, self._events = stream, stream.lines()
            while (raw := await anext(self._events, None)) is not None:
                if (event := container_event(raw)) is not None:
                    return event
            raise RuntimeFailure("the docker event stream ended")
        except (RuntimeFailure, ProtocolError, OSError, asyncio.IncompleteReadError) as exc:
            if self._done:  # closed while we read
                raise StopAsyncIteration from None
            await self.aclose()
            raise _translate(exc) from exc

    @property
    def ended(self) -> bool:
        return self._done

    async def aclose(self) -> None:
        self._done = True
        if self._stream is not None:
            self._stream.close()
            self._stream = None


class DockerRuntime:
    """Runtime on a Docker engine (unix socket or ``base_url``); see ``agent.runtime.base.Runtime``."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        timeout_s: int = 60,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        """``observe``: told (call name, seconds) after every engine call."""
        self._base_url = base_url
        self._observe = observe
        self._timeout_s = timeout_s
        self._client: EngineClient | None = None
        self._streams: list[DockerEvents | DockerLogs] = []
        self._closed = False

    def _engine(self) -> EngineClient:
        """The engine client, made on first use (a bad address fails the call, not the constructor)."""
        if self._closed:
            raise RuntimeFailure("the docker runtime is closed")
        if self._client is None:
            try:
                self._client = EngineClient(self._base_url, timeout_s=self._timeout_s)
            except ValueError as exc:
                raise RuntimeFailure(str(exc)) from exc
        return self._client

    async def _call(self, name: str, method: str, url: str, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return await self._engine().call(method, url, **kwargs)
        except RuntimeFailure as exc:
            translated = _translate(exc)
            if translated is exc:
                raise
            raise translated from exc
        finally:
            if self._observe is not None:
                self._observe(name, time.perf_counter() - began)

    # -- images ---------------------------------------------------------------------------------------

    async def ping(self) -> None:
        await self._call("ping", "GET", "/_ping", versioned=False)

    async def has_image(self, image: str) -> bool:
        try:
            await self._call("inspect_image", "GET", path("/images/{}/json", image))
        except (ImageNotFound, ContainerNotFound):
            return False
        return True

    async def images(self) -> list[str]:
        found = await self._call("images", "GET", "/images/json")
        return sorted({tag for img in found for tag in (img.get("RepoTags") or []) if tag != "<none>:<none>"})

    async def _pull(self, image: str) -> None:
        repository, tag = split_image(image)
        # Without a tag the API would pull every tag of the repository; the CLI means "latest".
        params = {"fromImage": repository, "tag": tag or "latest"}
        began = time.perf_counter()
        credentials = await auth_header(repository)
        headers = {"X-Registry-Auth": credentials} if credentials else None
        try:
            # No limit on the answer's head: the engine sends it with the first line, after the registry.
            stream = await self._engine().stream(
                "POST", "/images/create", params, headers=headers, head_timeout_s=None
            )
            try:
                async for line in stream.lines():
                    if isinstance(line, dict) and line.get("error"):
                        raise ImageNotFound(str(line["error"]))
            finally:
                stream.close()
        except ImageNotFound:
            raise
        except (RuntimeFailure, ProtocolError, OSError, asyncio.IncompleteReadError) as exc:
            raise ImageNotFound(str(exc)) from exc
        finally:
            if self._observe is not None:
                self._observe("pull", time.perf_counter() - began)

    async def ensure_image(self, image: str, policy: PullPolicy) -> None:
        if policy is PullPolicy.ALWAYS or not await self.has_image(image):
            if policy is PullPolicy.NEVER:
                raise ImageNotFound(
                    f"image {image!r} is not present on this host and the pull policy is 'never'"
                )
            await self._pull(image)

    # -- containers -----------------------------------------------------------------------------------

    async def _ids(self, labels: list[str]) -> list[str]:
        """The ids of every container (running or not) that carries all of ``labels``."""
        params = {"all": True, "filters": {"label": labels}}
        return [str(s["Id"]) for s in await self._call("list", "GET", "/containers/json", params=params)]

    async def _find_id(self, instance_id: str) -> str | None:
        found = await self._ids([f"{LABEL_INSTANCE}={instance_id}"])
        return found[0] if found else None

    async def create(self, spec: ContainerSpec) -> str:
        existing = await self._find_id(spec.instance_id)
        if existing is not None:
            return existing
        try:
            created = await self._call(
                "create",
                "POST",
                "/containers/create",
                params={"name": f"{_NAME_PREFIX}{spec.instance_id}"},
                body=create_body(spec),
            )
        except EngineError as exc:
            if exc.status != 409:
                raise
            # The name is taken, most likely by a concurrent create of this instance. The engine reserves the
            # name before that container shows in a list, so give the other create a moment to finish.
            for _ in range(40):
                if (winner := await self._find_id(spec.instance_id)) is not None:
                    return winner
                await asyncio.sleep(0.05)
            raise
        return str(created["Id"])

    async def start(self, container_id: str) -> None:
        # 304: already running, which is what the caller wanted.
        await self._call("start", "POST", path("/containers/{}/start", container_id))

    async def stop(self, container_id: str, timeout_s: int) -> None:
        # The engine answers 304 for a container that is not running: done as well.
        await self._call(
            "stop",
            "POST",
            path("/containers/{}/stop", container_id),
            params={"t": timeout_s},
            timeout_s=self._timeout_s + timeout_s,
            waits=True,
        )

    async def kill(self, container_id: str, signal: str = "SIGKILL") -> None:
        await self._call("kill", "POST", path("/containers/{}/kill", container_id), params={"signal": signal})

    async def remove(self, container_id: str) -> None:
        try:
            await self._call(
                "remove", "DELETE", path("/containers/{}", container_id), params={"v": True, "force": True}
            )
        except ContainerNotFound:
            pass
        except EngineError as exc:
            # A removal already under way (a redelivered command) ends the same way as ours would.
            if exc.status != 409 or "already in progress" not in str(exc):
                raise

    def logs(self, container_id: str, tail: int, follow: bool) -> DockerLogs:
        stream = DockerLogs(self._engine, container_id, tail, follow)
        self._track(stream)
        return stream

    async def inspect(self, container_id: str) -> ContainerInfo:
        return container_info(await self._call("inspect", "GET", path("/containers/{}/json", container_id)))

    async def _labelled(self, labels: list[str]) -> list[ContainerInfo]:
        # The list summaries lack the exit code and start time, so each container is inspected as well;
        # only their ids are kept meanwhile.
        infos: list[ContainerInfo] = []
        for container_id in await self._ids(labels):
            try:
                infos.append(await self.inspect(container_id))
            except ContainerNotFound:  # removed between the list and the inspect
                continue
        return infos

    async def list(self, node_id: str) -> list[ContainerInfo]:
        return await self._labelled([f"{LABEL_NODE}={node_id}"])

    async def find(self, node_id: str, instance_id: str) -> ContainerInfo | None:
        found = await self._labelled([f"{LABEL_NODE}={node_id}", f"{LABEL_INSTANCE}={instance_id}"])
        return found[0] if found else None

    # -- events and shutdown --------------------------------------------------------------------------

    def events(self, node_id: str) -> DockerEvents:
        """Must be called with the event loop running; events from this moment on are delivered."""
        self._engine()  # a closed runtime refuses here
        stream = DockerEvents(self._engine, node_id, time.time_ns())
        self._track(stream)
        return stream

    def _track(self, stream: DockerEvents | DockerLogs) -> None:
        """Kept so close() can end them; the ones already ended are dropped as new ones come."""
        self._streams = [s for s in self._streams if not s.ended] + [stream]

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for stream in self._streams:
            await stream.aclose()
        self._streams = []
        if self._client is not None:
            self._client.close()


def create_body(spec: ContainerSpec) -> dict[str, Any]:
    """The engine's create document for a spec: ports published TCP and UDP, limits, labels, no restarts."""
    exposed: dict[str, dict[str, Any]] = {}
    bindings: dict[str, list[dict[str, str]]] = {}
    for binding in spec.ports:
        for proto in ("tcp", "udp"):
            key = f"{binding.port}/{proto}"
            exposed[key] = {}
            published = {"HostIp": binding.bind_address, "HostPort": str(binding.port)}
            bindings.setdefault(key, []).append(published)
    host_config: dict[str, Any] = {
        "PortBindings": bindings,
        "Binds": [f"{m.source}:{m.target}:{'ro' if m.read_only else 'rw'}" for m in spec.mounts],
        "RestartPolicy": {"Name": "no"},  # the agent owns restarts and their back-off
        "Init": False,
    }
    if spec.memory_mib > 0:
        # Swap equal to memory: the container gets no swap beyond its limit.
        host_config.update(Memory=spec.memory_mib * _MIB, MemorySwap=spec.memory_mib * _MIB)
    if spec.cpu_percent > 0:
        host_config.update(CpuPeriod=_CPU_PERIOD_US, CpuQuota=spec.cpu_percent * _CPU_PERIOD_US // 100)
    return {
        "Image": spec.image,
        "Cmd": list(spec.command) or None,
        "Env": [f"{k}={v}" for k, v in spec.env.items()],
        "Labels": {
            **spec.labels,
            LABEL_INSTANCE: spec.instance_id,
            LABEL_NODE: spec.node_id,
            LABEL_MANAGED: "true",
        },
        "ExposedPorts": exposed,
        "StopSignal": spec.stop_signal,
        "StopTimeout": spec.stop_timeout_s,
        "HostConfig": host_config,
    }


if TYPE_CHECKING:
    _check: type[Runtime] = DockerRuntime
