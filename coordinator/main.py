"""moorage-coordinator: load config, open the store (migrating it), start the gRPC gateway and the HTTP
API, and run the fleet's monitor and batch writer until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import signal
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web

from common import systemd
from common.config import ConfigError, load
from common.logging import configure, get
from coordinator import __version__
from coordinator.api import app as http_app
from coordinator.api.auth import Authenticator
from coordinator.api.outbound import WebhookPoster
from coordinator.api.services import Services
from coordinator.catalogs.images import Catalog, CatalogError
from coordinator.catalogs.sizes import SizeCatalog
from coordinator.config import CoordinatorConfig, split_host_port
from coordinator.domain.records import NodeBeat
from coordinator.fleet.cluster import ClusterChannel
from coordinator.fleet.live import Fleet
from coordinator.gateway.servicer import Gateway, start_server
from coordinator.security.cluster import ClusterKeyError, first_secrets, read_cluster_key
from coordinator.service.access import AccessService, FailureLimiter
from coordinator.service.agent_reports import AgentReports
from coordinator.service.bootstrap import ensure_admin, load_secrets
from coordinator.service.clients import ClientService
from coordinator.service.core import Core
from coordinator.service.deploy import DeployService
from coordinator.service.events import EventService
from coordinator.service.images import ImageService
from coordinator.service.instances import InstanceService
from coordinator.service.logs import LogService
from coordinator.service.nodes import NodeService
from coordinator.service.regions import RegionService
from coordinator.service.servers import ServerService
from coordinator.service.vpn import VpnService
from coordinator.service.webhooks import WebhookService
from coordinator.store import instances as instances_store
from coordinator.store import nodes as nodes_store
from coordinator.store.cluster import ClusterRows, sealed_rows
from coordinator.store.copy import Copied, CopyRefused, copy_database
from coordinator.store.engine import Store, sqlite_url
from coordinator.store.notify import PgBus

log = get("coordinator")

ENV = {
    "MOORAGE_ADMIN_KEY": "admin_key",
    "MOORAGE_DATA_DIR": "data_dir",
    "MOORAGE_DATABASE_URL": "storage.database",
    "MOORAGE_CLUSTER_KEY_FILE": "storage.cluster_key_file",
    "MOORAGE_HTTP": "http.listen",
    "MOORAGE_GRPC": "grpc.listen",
    "MOORAGE_LOG_LEVEL": "log_level",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="moorage-coordinator", description="The Moorage control plane.")
    p.add_argument("--config", help="YAML config file (see config/coordinator.yaml)")
    p.add_argument("--data-dir", help="database, CA, JWT secret and admin.key live here")
    p.add_argument("--http", help="HOST:PORT of the REST API")
    p.add_argument("--grpc", help="HOST:PORT of the agent sessions (mutual TLS)")
    p.add_argument("--grpc-enroll", help="HOST:PORT of agent enrollment (default: the session port + 1)")
    p.add_argument("--database", help="database URL (default: SQLite in the data directory)")
    p.add_argument(
        "--cluster-key-file",
        help="cluster key shared by the coordinators of one database (or MOORAGE_CLUSTER_KEY)",
    )
    p.add_argument("--admin-key", help="admin API key to install (also MOORAGE_ADMIN_KEY)")
    p.add_argument("--version", action="version", version=f"moorage-coordinator {__version__}")
    return p.parse_args(argv)


def load_config(args: argparse.Namespace) -> CoordinatorConfig:
    flags = {
        "data_dir": args.data_dir,
        "http.listen": args.http,
        "grpc.listen": args.grpc,
        "grpc.enroll_listen": args.grpc_enroll,
        "storage.database": args.database,
        "storage.cluster_key_file": args.cluster_key_file,
        "admin_key": args.admin_key,
    }
    config = load(CoordinatorConfig, args.config, env_map=ENV, flags=flags)
    if args.config:
        config.set_source(Path(args.config).resolve())
    return config


async def write_fleet_batch(core: Core, nodes: dict[str, NodeBeat]) -> None:
    """Dirty nodes' lastChecked and metrics, then instances' bandwidth totals: two short transactions, each
    taking its rows in id order, so neither holds node rows while it waits for an instance row that a
    transition holding that node wants (the lock order in store/claims.py)."""
    bandwidth = core.fleet.bandwidth.take_dirty()
    if nodes or bandwidth:
        with core.metrics.batch_writes.time():
            if nodes:
                async with core.store.write() as conn:
                    await nodes_store.write_heartbeats(conn, nodes)
            if bandwidth:
                async with core.store.write() as conn:
                    await instances_store.write_bandwidth(conn, bandwidth)


async def refresh_cluster(core: Core, cluster: ClusterChannel) -> None:
    """Once a batch period: this coordinator lives, and who holds which node's session, re-read."""
    while True:
        try:
            await cluster.refresh()
        except Exception:
            log.exception("reading the other coordinators' view failed; retrying")
        await asyncio.sleep(core.config.fleet.batch_period_s)


async def flush_batches(core: Core, access: AccessService) -> None:
    """The batch writer: dirty nodes' lastChecked and metrics, and API keys' last use, once per period."""
    while True:
        await asyncio.sleep(core.config.fleet.batch_period_s)
        batch = core.fleet.take_dirty()
        try:
            await write_fleet_batch(core, batch)
            await access.flush_key_uses()
        except Exception:
            log.exception("a batch write failed", nodes=len(batch))


class StartupError(Exception):
    """The coordinator cannot start (a port taken, a database unreachable); the message says which."""


class Coordinator:
    """The assembled daemon; tests and `make run` start it in-process through the same object."""

    def __init__(self, config: CoordinatorConfig) -> None:
        self.config = config
        self.tasks: list[asyncio.Task[None]] = []
        self.http_port = 0
        self.admin_key: str | None = None
        self.store: Store | None = None
        self.bus: PgBus | None = None
        self.core: Core | None = None
        self.grpc_server: grpc.aio.Server | None = None
        self.runner: web.AppRunner | None = None
        #: Told to end its streams before the HTTP server waits for its handlers.
        self.events: EventService | None = None
        self.poster: WebhookPoster | None = None

    async def start(self) -> None:
        """Start everything, or stop what was started and raise StartupError."""
        try:
            await self._start()
        except ClusterKeyError:
            await self.stop()
            raise
        except (OSError, RuntimeError, StartupError) as exc:
            await self.stop()
            raise exc if isinstance(exc, StartupError) else StartupError(str(exc)) from exc

    async def _start(self) -> None:
        cfg = self.config
        catalog = Catalog.load(cfg.resolve(cfg.catalog.images) if cfg.catalog.images else None)
        cfg.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.store = store = Store.open(
            cfg.storage.database or sqlite_url(cfg.data_dir), synchronous=cfg.storage.sqlite_synchronous
        )
        await store.migrate()
        key_file = cfg.storage.cluster_key_file
        secrets = await load_secrets(
            store, read_cluster_key(cfg.resolve(key_file) if key_file else None), cfg.data_dir, time.time()
        )
        self.core = core = Core(
            config=cfg,
            store=store,
            fleet=Fleet(cfg.fleet),
            catalog=catalog,
            ca=secrets.ca,
            sealer=secrets.sealer,
            sizes=SizeCatalog.load(cfg.resolve(cfg.catalog.sizes) if cfg.catalog.sizes else None),
        )
        async with store.read() as conn:
            # Before any session: the first heartbeat of each agent must add only what is new.
            core.fleet.bandwidth.load(await instances_store.bandwidth_meters(conn))
            if store.engine.dialect.name != "postgresql":
                # Agents of the last run are expected back; one that does not come is judged silent. (On
                # PostgreSQL the leader does this for the nodes no live coordinator holds.)
                core.fleet.expect([n.id for n in await nodes_store.list_nodes(conn) if n.enrolled])
            else:
                await self._join_cluster(core)
        self.admin_key = await ensure_admin(core, cfg.admin_key or None)
        instances = InstanceService(core)
        images = ImageService(core)
        await images.load()
        nodes = NodeService(core, instances)
        reports = AgentReports(core)
        self.grpc_server, core.session_port, core.enroll_port = await start_server(
            core, Gateway(core, nodes, reports)
        )
        if core.cluster is not None:
            address = f"{nodes.session_host()}:{core.session_port}"
            await core.cluster.join(f"{socket.gethostname()}:{os.getpid()}", address)
            self.tasks.append(asyncio.create_task(refresh_cluster(core, core.cluster), name="cluster-view"))
            log.info("joined the coordinators on the database", id=core.cluster.me, address=address)
        access = AccessService(
            core,
            secrets.signer(cfg.auth.jwt_ttl_s),
            FailureLimiter(cfg.auth.failed_attempts, cfg.auth.failed_window_s),
        )
        deploys = DeployService(core, cfg.placement.strategy)
        events = EventService(core)
        self.poster = WebhookPoster()
        services = Services(
            clock=core.clock,
            metrics=core.metrics,
            trusted_proxies=tuple(cfg.auth.trusted_proxies),
            auth=Authenticator(access),
            access=access,
            nodes=nodes,
            instances=instances,
            deploys=deploys,
            regions=RegionService(core),
            images=images,
            servers=ServerService(core, deploys, instances),
            clients=ClientService(core, deploys, instances),
            vpn=VpnService(core, deploys, instances),
            events=events,
            webhooks=WebhookService(core, events, self.poster),
            logs=LogService(core, instances),
        )
        self.events = services.events
        self.runner = web.AppRunner(http_app.build(services), access_log=None, handle_signals=False)
        await self.runner.setup()
        host, port = split_host_port(cfg.http.listen, "http.listen")
        site = web.TCPSite(self.runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(f"cannot listen on {cfg.http.listen} (http.listen): {exc.strerror}") from exc
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.http_port = sockets[0].getsockname()[1] if sockets else port
        bus = self.bus
        self.tasks += [
            asyncio.create_task(core.fleet.run_monitor(), name="fleet-monitor"),
            asyncio.create_task(flush_batches(core, access), name="batch-writer"),
            asyncio.create_task(systemd.watchdog_loop(), name="watchdog"),
            asyncio.create_task(
                services.vpn.run_sweeps(lambda: bus is None or bus.leading), name="release-sweeps"
            ),
            asyncio.create_task(
                services.events.run_pruning(lambda: bus is None or bus.leading), name="event-pruning"
            ),
            asyncio.create_task(
                services.webhooks.run_delivery(lambda: bus is None or bus.leading), name="webhook-delivery"
            ),
        ]
        endpoints = {
            "http": f"http://{host if host not in ('0.0.0.0', '::') else '127.0.0.1'}:{self.http_port}",
            "grpc_port": core.session_port,
            "enroll_port": core.enroll_port,
            "pid": os.getpid(),
        }
        # Written whole, then renamed: a reader (devrun, tests, an operator's script) never sees it half done.
        partial = cfg.data_dir / "endpoints.json.tmp"
        partial.write_text(json.dumps(endpoints))
        os.replace(partial, cfg.data_dir / "endpoints.json")
        log.info(
            "coordinator ready",
            version=__version__,
            database=store.engine.dialect.name,
            secrets=secrets.kept_in,
            **endpoints,
        )

    async def _join_cluster(self, core: Core) -> None:
        """On PostgreSQL: this coordinator among the others on the database (fleet/cluster.py)."""
        cluster: ClusterChannel | None = None

        def received(message: dict[str, Any]) -> None:
            if cluster is not None:
                cluster.receive(message)

        self.bus = bus = PgBus(core.store.engine.url.render_as_string(hide_password=False), received)
        cluster = ClusterChannel(str(uuid.uuid4()), core.fleet, bus, ClusterRows(core.store), core.relay)
        self.tasks.append(asyncio.create_task(bus.run(), name="cluster-bus"))
        try:
            await asyncio.wait_for(bus.listening.wait(), 15)
        except TimeoutError as exc:
            raise StartupError("cannot LISTEN on the database for the other coordinators' messages") from exc
        cluster.placement_changed = core.snapshot.forget
        core.cluster = cluster

    async def stop(self) -> None:
        """Stop whatever was started (also after a failed start)."""
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.core is not None and self.core.cluster is not None:
            with contextlib.suppress(Exception):
                await self.core.cluster.leave()
        if self.bus is not None:
            bus, self.bus = self.bus, None
            await bus.close()
        # Drop the references once stopped: a grpc.aio server still referenced when the loop closes (as
        # from the traceback of a failed start) tries to shut down again on a closed loop.
        if self.grpc_server is not None:
            server, self.grpc_server = self.grpc_server, None
            await server.stop(grace=2)
        if self.events is not None:
            self.events.close()
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()
        if self.poster is not None:
            poster, self.poster = self.poster, None
            await poster.close()
        if self.core is not None:
            await self.core.fleet.settle()
            # A last flush so lastChecked survives a clean restart.
            await write_fleet_batch(self.core, self.core.fleet.take_dirty())
        if self.store is not None:
            store, self.store = self.store, None
            await store.close()


#: The collector's generation thresholds. Python's default (700 allocations start a collection) runs a
#: young collection every few heartbeats at 10,000 sessions, and the full ones it leads to walk every
#: session's objects, each a pause of 100+ ms (bench/heartbeats.py at 3,000 sessions: p99 heartbeat delay
#: ≤ 500 ms, 0.31 cores; with these ≤ 10 ms, 0.23 cores, RSS +2%). Reference cycles are rare here.
GC_THRESHOLDS = (50_000, 20, 100)


async def serve(config: CoordinatorConfig) -> None:
    gc.set_threshold(*GC_THRESHOLDS)
    coordinator = Coordinator(config)
    await coordinator.start()
    # What startup made lives as long as the process: out of every later collection's walk.
    gc.freeze()
    if coordinator.admin_key:
        # Printed once: the only place besides <data-dir>/admin.key (mode 0600) where it appears.
        print(f"admin API key: {coordinator.admin_key}", file=sys.stdout, flush=True)
        print(f"(also written to {config.data_dir / 'admin.key'})", file=sys.stdout, flush=True)
    systemd.notify("READY=1")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    systemd.notify("STOPPING=1")
    log.info("coordinator stopping")
    await coordinator.stop()


def copy_database_command(argv: list[str]) -> int:
    """``moorage-coordinator copy-database``: an embedded store into an empty PostgreSQL database."""
    p = argparse.ArgumentParser(
        prog="moorage-coordinator copy-database",
        description="Copy an embedded store (SQLite) into an empty PostgreSQL database, secrets included.",
    )
    p.add_argument("--from", dest="source", required=True, help="sqlite:///path/to/moorage.db")
    p.add_argument("--to", dest="target", required=True, help="postgresql://user:pass@host/db (empty)")
    p.add_argument("--data-dir", help="the source coordinator's data directory (default: the file's)")
    p.add_argument("--cluster-key-file", help="seal its secrets into the target with this key")
    args = p.parse_args(argv)
    configure("warning", False)
    source_path = Path(args.source.split("///", 1)[-1])
    if not args.source.startswith("sqlite") or not source_path.is_file():
        print(
            f"moorage-coordinator: --from must name an existing SQLite store, not {args.source}",
            file=sys.stderr,
        )
        return 2
    data_dir = Path(args.data_dir) if args.data_dir else source_path.parent
    try:
        key = read_cluster_key(Path(args.cluster_key_file) if args.cluster_key_file else None)
        values, secrets = first_secrets(data_dir)
        extra = {}
        if key is not None and secrets:
            extra["cluster_secrets"] = sealed_rows(key.seal_all(values), time.time())
        copied = asyncio.run(_copy(args.source, args.target, extra))
    except (CopyRefused, ClusterKeyError) as exc:
        print(f"moorage-coordinator: {exc}", file=sys.stderr)
        return 1
    print(f"copied {copied.total} rows: " + ", ".join(f"{t} {n}" for t, n in copied.rows.items() if n))
    if extra:
        print(
            "the data directory's CA, sealing key and JWT secret: in the target, sealed with the cluster key"
        )
    elif secrets:
        print(
            f"the CA, sealing key and JWT secret stay in {data_dir}: start the coordinator on PostgreSQL "
            "with that data directory, or copy with --cluster-key-file to share them with several"
        )
    return 0


async def _copy(source_url: str, target_url: str, extra: dict[str, list[dict[str, object]]]) -> Copied:
    source, target = Store.open(source_url), Store.open(target_url)
    try:
        return await copy_database(source, target, extra)
    finally:
        await source.close()
        await target.close()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["copy-database"]:
        raise SystemExit(copy_database_command(argv[1:]))
    args = parse_args(argv)
    try:
        config = load_config(args)
    except ConfigError as exc:
        print(f"moorage-coordinator: {exc}", file=sys.stderr)
        raise SystemExit(78) from exc
    configure(config.log_level, config.log_json)
    try:
        asyncio.run(serve(config))
    except (CatalogError, ClusterKeyError) as exc:  # the image or the size catalog; the cluster key
        print(f"moorage-coordinator: {exc}", file=sys.stderr)
        raise SystemExit(78) from exc
    except StartupError as exc:
        log.error("coordinator cannot start", reason=str(exc))
        print(f"moorage-coordinator: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc


if __name__ == "__main__":
    main()
