"""moorage-agent: enroll once, then hold the coordinator session, run what it wants with Docker and
report what is true. Stopping the agent never stops the containers."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import sys

from agent import __version__, identity, shaping
from agent.config import AgentConfig
from agent.executor import Executor
from agent.files import FileStore
from agent.heap import limit_arenas, release_periodically
from agent.identity import CoordinatorUnreachable, EnrollmentRefused, Identity, JoinToken
from agent.metrics import AgentMetrics
from agent.runtime.base import ContainerEvent, EventKind, Runtime, RuntimeFailure
from agent.runtime.docker import DockerRuntime
from agent.session import AgentSession, Outbox
from agent.shaping import Shaper
from agent.telemetry import Telemetry
from common import systemd
from common.config import ConfigError, load
from common.logging import configure, get

log = get("agent")

ENV = {
    "MOORAGE_COORDINATOR": "coordinator",
    "MOORAGE_ENROLL_ADDRESS": "enroll_address",
    "MOORAGE_JOIN_TOKEN": "join_token",
    "MOORAGE_DATA_DIR": "data_dir",
    "MOORAGE_LOG_LEVEL": "log_level",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="moorage-agent", description="The Moorage host agent.")
    p.add_argument("--config", help="YAML config file (see config/agent.yaml)")
    p.add_argument("--coordinator", help="HOST:PORT of the coordinator's agent sessions")
    p.add_argument("--enroll-address", help="HOST:PORT of the coordinator's enrollment port")
    p.add_argument("--join-token", help="one-time join token (first start only)")
    p.add_argument("--data-dir", help="identity and state directory")
    p.add_argument("--version", action="version", version=f"moorage-agent {__version__}")
    return p.parse_args(argv)


async def obtain_identity(config: AgentConfig) -> Identity:
    """The stored identity, or a new one from the join token (retrying while the coordinator is away)."""
    found = identity.load(config.data_dir)
    if found is not None:
        return found
    if not config.join_token:
        raise EnrollmentRefused(f"{config.data_dir} holds no identity and no --join-token was given")
    token = JoinToken.parse(config.join_token)
    target = config.enroll_address or token.enroll_address or config.enroll_target()
    delay = config.reconnect_initial_s
    while True:
        try:
            new = await identity.enroll(target, token, __version__)
        except CoordinatorUnreachable as exc:
            log.warning("enrollment postponed", error=str(exc), retry_in_s=round(delay, 1))
            await asyncio.sleep(delay)
            delay = min(delay * 2, config.reconnect_max_s)
            continue
        identity.save(config.data_dir, new)
        identity.save_coordinators(config.data_dir, config.coordinators())
        log.info("enrolled", node_id=new.node_id)
        return new


async def wait_for_engine(runtime: Runtime, config: AgentConfig) -> None:
    delay = config.reconnect_initial_s
    while True:
        try:
            await runtime.ping()
            return
        except RuntimeFailure as exc:
            log.warning("docker engine unreachable", error=str(exc), retry_in_s=round(delay, 1))
            await asyncio.sleep(delay)
            delay = min(delay * 2, config.reconnect_max_s)


async def follow_engine_events(
    runtime: Runtime, node_id: str, executor: Executor, config: AgentConfig
) -> None:
    """Turn engine events into instance events; re-subscribe when the engine restarts."""
    while True:
        stream = runtime.events(node_id)
        try:
            async for ev in stream:
                _on_engine_event(executor, ev)
        except RuntimeFailure as exc:
            log.warning("engine event stream lost", error=str(exc))
        finally:
            await stream.aclose()
        await asyncio.sleep(config.reconnect_initial_s)
        await wait_for_engine(runtime, config)
        # The engine restarted (or the stream broke): containers it stopped meanwhile are started again.
        try:
            await executor.resync()
        except RuntimeFailure as exc:
            log.warning("resync after the engine came back failed", error=str(exc))


async def resync_periodically(executor: Executor, config: AgentConfig) -> None:
    """Close the gap between what is wanted and what runs, whether or not the coordinator is there."""
    while True:
        await asyncio.sleep(config.resync_interval_s)
        try:
            await executor.resync()
        except Exception as exc:
            # The engine may be restarting: the engine watcher resyncs once it is back.
            log.warning("resync skipped", error=str(exc))


def _on_engine_event(executor: Executor, ev: ContainerEvent) -> None:
    if ev.kind is EventKind.EXITED:
        executor.on_engine_event("exited", ev.instance_id, ev.exit_code, ev.container_id)
    elif ev.kind is EventKind.OOM:
        executor.on_engine_event("oom", ev.instance_id, 0, ev.container_id)


def assemble(
    config: AgentConfig,
    node: Identity,
    runtime: Runtime,
    *,
    shaper: Shaper = shaping.cap,
    disk_path: str = "",
    metrics: AgentMetrics | None = None,
) -> tuple[Executor, AgentSession]:
    """The agent's parts over a runtime, wired one way: the executor reports into the outbox, the session
    drains it and hands commands to the executor."""
    outbox = Outbox(config.event_buffer, config.confirm_start_after_s)
    executor = Executor(
        runtime,
        node.node_id,
        config.pull_policy,
        report=outbox.report,
        unknown_grace_s=config.unknown_container_grace_s,
        restart_policy=config.restart,
        files=FileStore(config.data_dir / "files"),
        shaper=shaper,
    )
    telemetry = Telemetry(disk_path=disk_path or str(config.data_dir))
    return executor, AgentSession(config, node, runtime, executor, telemetry, outbox, metrics)


async def run(config: AgentConfig) -> None:
    metrics = AgentMetrics(enabled=bool(config.metrics_listen))
    metrics.serve(config.metrics_listen)
    node = await obtain_identity(config)
    runtime = DockerRuntime(config.docker_url or None, observe=metrics.docker_call)
    await wait_for_engine(runtime, config)
    executor, session = assemble(config, node, runtime, metrics=metrics)
    systemd.notify("READY=1")
    log.info("agent ready", node_id=node.node_id, coordinator=config.coordinator, version=__version__)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    forever = [
        asyncio.create_task(session.run(), name="session"),
        asyncio.create_task(
            follow_engine_events(runtime, node.node_id, executor, config), name="engine-events"
        ),
        asyncio.create_task(resync_periodically(executor, config), name="resync"),
    ]
    # Both return at once when switched off: systemd set no watchdog, or trimming is off or unsupported.
    tasks = [
        *forever,
        asyncio.create_task(systemd.watchdog_loop(), name="watchdog"),
        asyncio.create_task(release_periodically(config.memory_trim_interval_s), name="memory-trim"),
    ]
    stopper = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait([stopper, *forever], return_when=asyncio.FIRST_COMPLETED)
        for task in done - {stopper}:
            # None of them ends on its own: a permanent refusal surfaces here (exit 78); anything else is
            # a defect, and the exit lets systemd start a fresh agent (which re-adopts the containers).
            error = task.exception() if not task.cancelled() else None
            if isinstance(error, EnrollmentRefused):
                raise error
            log.error("agent task ended", task=task.get_name(), exc_info=error)
            raise SystemExit(1)
    finally:
        systemd.notify("STOPPING=1")
        log.info("agent stopping; containers keep running")
        for task in [*tasks, stopper]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await executor.close()
        await runtime.close()
        metrics.close()


def with_coordinators(config: AgentConfig) -> AgentConfig:
    """The session addresses: as configured, else as the join token carries them, else as the enrollment
    stored them in the data directory."""
    if config.coordinator:
        return config
    listed = JoinToken.parse(config.join_token).coordinators if config.join_token else ()
    listed = listed or identity.load_coordinators(config.data_dir)
    if not listed:
        raise ConfigError(
            "no coordinator address: give --coordinator HOST:PORT, a join token that carries the addresses, "
            "or a data directory an enrollment stored them in"
        )
    return dataclasses.replace(config, coordinator=",".join(listed))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    flags = {
        "coordinator": args.coordinator,
        "enroll_address": args.enroll_address,
        "join_token": args.join_token,
        "data_dir": args.data_dir,
    }
    try:
        config = with_coordinators(load(AgentConfig, args.config, env_map=ENV, flags=flags))
    except (ConfigError, EnrollmentRefused) as exc:
        print(f"moorage-agent: {exc}", file=sys.stderr)
        raise SystemExit(identity.EXIT_CONFIG) from exc
    configure(config.log_level, config.log_json)
    # Before any thread allocates: a thread keeps the arena it was first given.
    if config.malloc_arenas and not limit_arenas(config.malloc_arenas):
        log.warning("malloc_arenas not applied: the C library cannot cap its arenas (not glibc)")
    try:
        if identity.load(config.data_dir) is None:
            asyncio.run(obtain_identity(config))
            # The enrolled agent starts afresh, in the same process (systemd sees one pid): enrollment
            # loaded cryptography (~14 MiB resident), which the agent then never needs again.
            log.info("enrolled; starting afresh")
            sys.stdout.flush()
            sys.stderr.flush()
            os.execv(sys.executable, sys.orig_argv)
        asyncio.run(run(config))
    except EnrollmentRefused as exc:
        log.error("enrollment refused", reason=str(exc))
        print(f"moorage-agent: {exc}", file=sys.stderr)
        raise SystemExit(identity.EXIT_CONFIG) from exc


if __name__ == "__main__":
    main()
