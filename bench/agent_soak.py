"""The agent's footprint over time: a real agent against a real coordinator on real Docker, sampled.

Soak (the default): N busybox-httpd instances (default 50), heartbeats every second to compress time,
HTTP traffic to random instances all the while (bandwidth flowing), a container's own process killed every
few seconds (a crash the agent restarts), the coordinator SIGKILLed and started again on its addresses at a
third of the run and the Docker engine restarted at two thirds (SIGTERM to dockerd, which stops the
containers; the agent starts them again). Every SAMPLE_S seconds the agent's RSS, open file descriptors
and threads (from /proc), its asyncio task count and its C heap in use and free (from its own /metrics) are
read. Printed per figure: start and end of the measured part (after warm-up), peak, and the slope per hour
of a least-squares line through the measured samples. Goals: RSS slope ≤ 1 MiB/h, fds and tasks flat; the
C heap's two figures tell a leak (in use climbing) from fragmentation (free climbing). The agent's anonymous
memory after warm-up and at the end, by allocator (glibc's main heap, its threads' arenas, Python's
arenas and large blocks), says where any growth lives.

Idle (``--idle``): N instances, nothing happening, heartbeats at the default 5 s; after a settling minute
the agent's RSS and share of one core over the window. Goals: ≤ 50 MiB and ≤ 1 % with 3 instances, ≤ 80 MiB
and ≤ 3 % with 100.

    python -m bench.agent_soak [--minutes M] [--containers N] [--idle] [--agent-env NAME=VALUE ...]
                               [--agent-option NAME=VALUE ...] [--memray CAPTURE]

``--agent-option memory_trim_interval_s=0`` (say) runs the agent with an option of config/agent.yaml changed:
an A/B of a setting, against the same load. ``--memray CAPTURE`` runs the soak's agent under memray (native
stacks, aggregated: the file stays small over hours) and prints what still held memory at its end
(bench/memray_leaks.py); the agent's Python needs memray (``.venv-agent/bin/pip install memray``). memray
slows every allocation and keeps tables of its own: its RSS figures are not the agent's.

``make bench`` runs a short soak and the two idle cases.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import psutil
import yaml

from bench.daemons import (
    REPO,
    TEST_IMAGE,
    AgentProcess,
    Api,
    CoordinatorProcess,
    agent_figures,
    create_node,
    leave_no_containers,
    node_view,
    port_block,
    wait_for,
)

SAMPLE_S = 5.0
#: A progress line every this many samples (a long soak shows it is alive, and how it goes).
PROGRESS_EVERY = 12
#: Seconds between two crashes (a container's process SIGKILLed from the host) in a soak.
CRASH_EVERY_S = 4.0
#: The agent's crash back-off in the soak: quick, so crashed containers are back within seconds.
RESTART = {"initial_delay_s": 0.5, "max_delay_s": 5.0, "reset_after_s": 20.0, "crash_loop_after": 1000}
SOAK_FLEET = {
    "heartbeat_interval_s": 1.0,
    "grace_intervals": 3,
    "offline_after_s": 60.0,
    "batch_period_s": 1.0,
}
#: The coordinator's own defaults (config/coordinator.yaml): what an operator's idle host sees.
IDLE_FLEET = {
    "heartbeat_interval_s": 5.0,
    "grace_intervals": 3,
    "offline_after_s": 60.0,
    "batch_period_s": 1.0,
}
MIB = 2**20
#: The agent as operators install it, moorage[agent] alone (`make bench` builds it): the dev venv also
#: holds what the coordinator and the tests need, some of which the agent's libraries pick up when present.
AGENT_PYTHON = REPO / ".venv-agent" / "bin" / "python"


@dataclass
class Sample:
    at: float
    rss_mib: float
    fds: int
    threads: int
    tasks: int
    heap_in_use_mib: float
    """glibc's mallinfo2 on the agent's /metrics: live C blocks; 0 where not served."""
    heap_free_mib: float


@dataclass
class Soak:
    coordinator: CoordinatorProcess
    agent: AgentProcess
    node_id: str
    ports: list[int]
    metrics_port: int
    samples: list[Sample] = field(default_factory=list)
    crashes: int = 0
    requests: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def pid(self) -> int:
        assert self.agent.proc is not None, "the agent is not running"
        return self.agent.proc.pid

    def sample(self) -> Sample:
        proc = psutil.Process(self.pid)
        rss, fds, threads = proc.memory_info().rss / MIB, proc.num_fds(), proc.num_threads()
        figures = agent_figures(self.metrics_port)
        if "moorage_agent_asyncio_tasks" not in figures:
            raise AssertionError("the agent's /metrics has no moorage_agent_asyncio_tasks")
        return Sample(
            time.monotonic(),
            rss,
            fds,
            threads,
            int(figures["moorage_agent_asyncio_tasks"]),
            figures.get("moorage_agent_heap_in_use_bytes", 0.0) / MIB,
            figures.get("moorage_agent_heap_free_bytes", 0.0) / MIB,
        )

    def traffic(self) -> None:
        """HTTP to random instances, as their users would: bytes in and out of every container."""
        while not self.stop.is_set():
            port = random.choice(self.ports)
            # A container killed mid-answer: OSError, or IncompleteRead (an HTTPException).
            with contextlib.suppress(OSError, http.client.HTTPException):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                    resp.read()
                self.requests += 1
            self.stop.wait(0.02)

    def crasher(self) -> None:
        """A running container's own process SIGKILLed from the host every CRASH_EVERY_S: a crash."""
        client = docker.from_env()
        try:
            while not self.stop.wait(CRASH_EVERY_S):
                with contextlib.suppress(docker.errors.DockerException, OSError, ValueError):
                    running = client.containers.list(filters={"label": f"moorage.node={self.node_id}"})
                    pid = int(random.choice(running).attrs["State"]["Pid"]) if running else 0
                    if pid > 0:  # 0 while the engine stops it: os.kill(0) would be our own process group
                        os.kill(pid, signal.SIGKILL)
                        self.crashes += 1
        finally:
            client.close()


@dataclass(frozen=True)
class Variant:
    """How this run's agent differs from the installed one: its environment, options of its config file, and
    whether memray traces it."""

    env: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    memray: Path | None = None

    def __str__(self) -> str:
        said = [f"{k}={v}" for k, v in {**self.env, **self.options}.items()]
        said += [f"under memray ({self.memray})"] if self.memray else []
        return "".join(f", {x}" for x in said)

    def apply(self, agent: AgentProcess) -> None:
        agent.env.update(self.env)
        if self.memray is None:
            return
        python = agent.argv[0]
        if subprocess.run([python, "-c", "import memray"], capture_output=True, check=False).returncode:
            raise SystemExit(f"--memray needs memray where the agent runs: {python} -m pip install memray")
        assert agent.argv[1:3] == ["-m", "agent.main"], agent.argv
        # memray runs the module in its own process, no fork: the pid sampled stays the agent's.
        tracer = ["-m", "memray", "run", "--native", "--aggregate", "--force", "-q", "-o", str(self.memray)]
        agent.argv[1:1] = tracer


def memray_report(variant: Variant) -> None:
    """After the agent stopped (memray writes its capture then): the text report, and memray's flame graph
    of the same next to the capture."""
    if variant.memray is None:
        return
    python = str(AGENT_PYTHON) if AGENT_PYTHON.exists() else sys.executable
    capture = str(variant.memray)
    html = str(variant.memray.with_suffix(".html"))
    subprocess.run([python, "-m", "bench.memray_leaks", capture], cwd=REPO, check=True)
    flamegraph = ["-m", "memray", "flamegraph", "--leaks", "--force", "-o", html, capture]
    subprocess.run([python, *flamegraph], check=True)


@contextlib.contextmanager
def fleet(
    tmp: Path, containers: int, fleet_options: dict[str, float], variant: Variant, **agent: Any
) -> Iterator[Soak]:
    """A coordinator, a node with ``containers`` instances running on this host's Docker, and its agent
    serving /metrics: all real processes, removed afterwards."""
    coordinator = CoordinatorProcess(tmp / "c", fleet=fleet_options, extra={"log_level": "warning"})
    coordinator.start()
    ports = port_block(containers + 1)
    api = coordinator.api()
    node = create_node(api, ports[:-1], ram=64 * containers + 1024, processor=max(2, containers))
    metrics_port = ports[-1]
    settings = {
        "reconnect_initial_s": 0.5,
        "reconnect_max_s": 5.0,
        "log_level": "warning",
        "metrics_listen": f"127.0.0.1:{metrics_port}",
        **agent,
        **variant.options,
    }
    proc = AgentProcess(tmp / "a", coordinator, node["joinToken"], **settings)
    if AGENT_PYTHON.exists():
        proc.argv[0] = str(AGENT_PYTHON)
    variant.apply(proc)
    proc.start()
    soak = Soak(coordinator, proc, node["id"], ports[:-1], metrics_port)
    try:
        wait_for(lambda: node_view(api, node["id"])["isOnline"], 30, "the node to come online")
        deploy_all(api, node["id"], soak.ports)
        yield soak
    finally:
        soak.stop.set()
        proc.stop()
        coordinator.stop()
        leave_no_containers(node["id"])


def deploy_all(api: Api, node_id: str, ports: Sequence[int]) -> None:
    body = {"image": TEST_IMAGE, "memory": 32, "cpu": 5, "nodeId": node_id}
    ids = []
    for n, port in enumerate(ports):
        r = api.post("/api/instances/deploy", {**body, "name": f"soak-{n}", "ports": [port]})
        assert r.status == 201, r.body
        ids.append(r.body["id"])

    def all_running() -> bool:
        states = {i["id"]: i["state"] for i in api.get("/api/instances").body}
        return all(states.get(iid) == "running" for iid in ids)

    wait_for(all_running, 60 + 2 * len(ids), "every instance running", interval=0.5)


def restart_engine() -> str:
    """SIGTERM to this host's dockerd (it stops the containers) and start it as `make test-env` does."""
    pid_file = Path("/var/run/docker.pid")
    if not pid_file.exists():
        return "skipped (no local dockerd)"
    pid = int(pid_file.read_text())
    os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).wait(60)
    subprocess.run(["bash", str(REPO / "tests/env/ensure-docker.sh")], check=True, timeout=120)
    return "done"


def slope_per_hour(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per hour."""
    if len(points) < 2:
        return 0.0
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var * 3600


def report(samples: Sequence[Sample], warmup: float, settled: float) -> list[str]:
    """Per figure: start, end and peak after ``warmup`` seconds, the slope per hour over that, and the slope
    from ``settled`` seconds on (after the last restart: what a quiet month looks like)."""
    first = samples[0].at
    measured = [s for s in samples if s.at - first >= warmup] or list(samples)
    quiet = [s for s in samples if s.at - first >= settled]
    lines = []
    for name, unit, get, goal in (
        ("RSS", "MiB", lambda s: s.rss_mib, "goal ≤ 1 MiB/h"),
        ("open fds", "", lambda s: float(s.fds), "goal flat"),
        ("threads", "", lambda s: float(s.threads), ""),
        ("asyncio tasks", "", lambda s: float(s.tasks), "goal flat"),
        ("C heap in use", "MiB", lambda s: s.heap_in_use_mib, "climbing: a leak"),
        ("C heap free", "MiB", lambda s: s.heap_free_mib, "climbing, in use flat: fragmentation"),
    ):
        values = [get(s) for s in measured]
        slope = slope_per_hour([(s.at, get(s)) for s in measured])
        calm = slope_per_hour([(s.at, get(s)) for s in quiet])
        fmt = "{:.1f}" if unit else "{:.0f}"
        per_hour = f"{unit}/h" if unit else "/h"
        lines.append(
            f"  {name:<14} start {fmt.format(values[0]):>6}  end {fmt.format(values[-1]):>6}  "
            f"peak {fmt.format(max(values)):>6}  slope {slope:+7.2f} {per_hour}, "
            f"after the restarts {calm:+7.2f} {per_hour}   {goal}".rstrip()
        )
    return lines


def installed_as() -> str:
    return "moorage[agent] alone" if AGENT_PYTHON.exists() else "the dev venv (make bench builds .venv-agent)"


def soak(minutes: float, containers: int, variant: Variant) -> None:
    print(
        f"agent soak: {minutes:g} min, {containers} instances (installed as {installed_as()}){variant}",
        flush=True,
    )
    split: list[dict[str, float]] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        fleet(Path(tmp), containers, SOAK_FLEET, variant, restart=RESTART) as s,
    ):
        begun = time.monotonic()
        total = minutes * 60
        warmup = min(120.0, total / 5)
        events = [(total / 3, "coordinator restart"), (2 * total / 3, "Docker engine restart")]
        settled = 2 * total / 3 + 60
        threads = [
            threading.Thread(target=s.traffic, daemon=True),
            threading.Thread(target=s.crasher, daemon=True),
        ]
        for t in threads:
            t.start()
        cpu_start = psutil.Process(s.pid).cpu_times()
        done: list[str] = []
        while (elapsed := time.monotonic() - begun) < total:
            if events and elapsed >= events[0][0]:
                _, what = events.pop(0)
                if what == "coordinator restart":
                    s.coordinator.stop(signal.SIGKILL)
                    time.sleep(1.0)
                    s.coordinator.start()
                    done.append(f"coordinator SIGKILLed and started again at {elapsed:.0f} s")
                else:
                    done.append(f"Docker engine restart at {elapsed:.0f} s: {restart_engine()}")
                print(f"  {done[-1]}", flush=True)
            assert s.agent.running, f"the agent died:\n{s.agent.log()}"
            if not split and elapsed >= warmup:
                split.append(anonymous_by_allocator(s.pid))
            with contextlib.suppress(OSError):  # /metrics unreachable for a moment: next sample
                s.samples.append(s.sample())
                if len(s.samples) % PROGRESS_EVERY == 1:
                    x = s.samples[-1]
                    print(
                        f"  {elapsed:5.0f} s: RSS {x.rss_mib:.1f} MiB, fds {x.fds}, threads {x.threads}, "
                        f"tasks {x.tasks}, C heap {x.heap_in_use_mib:.1f} in use "
                        f"+ {x.heap_free_mib:.1f} free",
                        flush=True,
                    )
            time.sleep(SAMPLE_S)
        cpu_end = psutil.Process(s.pid).cpu_times()
        split.append(anonymous_by_allocator(s.pid))
        s.stop.set()
        for t in threads:
            t.join(10)
        wait_for(
            lambda: node_view(s.coordinator.api(), s.node_id)["isOnline"], 30, "the node online at the end"
        )
    cpu = (cpu_end.user + cpu_end.system - cpu_start.user - cpu_start.system) / total
    print(
        f"agent soak over: heartbeats every 1 s, {s.crashes} crashes, {s.requests} HTTP requests; "
        f"warm-up {warmup:.0f} s; samples every {SAMPLE_S:g} s"
    )
    print(f"  agent CPU over the run: {cpu * 100:.1f} % of a core (traffic, crashes and restarts included)")
    print(f"  slopes after warm-up, and from {settled:.0f} s on (a minute after the last restart)")
    for line in report(s.samples, warmup, settled):
        print(line)
    print(f"  anonymous memory, after warm-up -> end (MiB): {_split_line(split[0], split[-1])}")
    memray_report(variant)


def idle(minutes: float, containers: int, variant: Variant) -> None:
    with tempfile.TemporaryDirectory() as tmp, fleet(Path(tmp), containers, IDLE_FLEET, variant) as s:
        time.sleep(60)  # settle: the deploys' confirmations, the first full heartbeats
        proc = psutil.Process(s.pid)
        before = proc.cpu_times()
        begun = time.monotonic()
        while time.monotonic() - begun < minutes * 60:
            s.samples.append(s.sample())
            time.sleep(SAMPLE_S)
        after = proc.cpu_times()
        took = time.monotonic() - begun
        private, shared = _rss_split(s.pid)
    cpu = (after.user + after.system - before.user - before.system) / took
    rss = [x.rss_mib for x in s.samples]
    last = s.samples[-1]
    goal = "≤ 50 MiB, ≤ 1 %" if containers <= 3 else "≤ 80 MiB, ≤ 3 %" if containers <= 100 else ""
    print(
        f"agent idle, {containers} instances, heartbeats every 5 s, {took:.0f} s: "
        f"RSS {statistics.median(rss):.1f} MiB (peak {max(rss):.1f}), CPU {cpu * 100:.2f} % of a core, "
        f"threads {last.threads}, fds {last.fds}, tasks {last.tasks}   ({goal}; {installed_as()})"
    )
    print(
        f"  of the RSS at the end: anonymous {private:.1f} MiB, pages of files (libraries) {shared:.1f} MiB"
    )


def _rss_split(pid: int) -> tuple[float, float]:
    """Anonymous memory and file-backed pages (the code of the interpreter, grpc and the other libraries,
    clean: the kernel can drop them under pressure) of the process's RSS, in MiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        kib = {
            k: int(v.split()[0])
            for k, _, v in (line.partition(":") for line in status)
            if k.startswith("Rss")
        }
    return kib["RssAnon"] / 1024, (kib["RssFile"] + kib["RssShmem"]) / 1024


#: glibc's arenas for threads other than the main one live in heaps of this size, aligned to it.
THREAD_HEAP = 64 * MIB


def anonymous_by_allocator(pid: int) -> dict[str, float]:
    """The process's anonymous memory outside the libraries' own data, by where it was allocated, in MiB:
    glibc's main heap (brk), the arenas glibc gives other threads (grpc's, the metrics server's), and the
    rest (Python's own 1 MiB arenas for small objects, large blocks mapped on their own, thread stacks).
    Growth in a soak shows up in one of them, which says where to look next."""
    split = dict.fromkeys(("main heap", "thread arenas", "python arenas and large blocks"), 0.0)
    kind: str | None = None
    with open(f"/proc/{pid}/smaps", encoding="ascii", errors="replace") as smaps:
        for line in smaps:
            head = line.split()
            if len(head) >= 5 and "-" in head[0]:  # a mapping: range perms offset dev inode [path]
                kind = _allocator(head[5] if len(head) > 5 else "", int(head[0].split("-")[0], 16))
            elif head and head[0] == "Anonymous:" and kind is not None:
                split[kind] += int(head[1]) / 1024
    return split


def _allocator(path: str, start: int) -> str | None:
    """Which part of anonymous memory a mapping is (None: a library's or file's own)."""
    if path == "[heap]":
        return "main heap"
    if path:
        return None
    return "thread arenas" if start % THREAD_HEAP == 0 else "python arenas and large blocks"


def _split_line(before: dict[str, float], after: dict[str, float]) -> str:
    return ", ".join(f"{k} {before[k]:.1f} -> {after[k]:.1f}" for k in before)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.agent_soak")
    parser.add_argument("--minutes", type=float, help="how long (soak: 3 by default; idle: 1)")
    parser.add_argument("--containers", type=int, help="instances (soak: 50 by default; idle: 3 and 100)")
    parser.add_argument("--idle", action="store_true", help="the idle figures instead of a soak")
    parser.add_argument(
        "--agent-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set in the agent's environment (an A/B of MALLOC_ARENA_MAX, say); may be repeated",
    )
    parser.add_argument(
        "--agent-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an option of config/agent.yaml, VALUE read as YAML (memory_trim_interval_s=0); may be repeated",
    )
    parser.add_argument(
        "--memray",
        type=Path,
        metavar="CAPTURE",
        help="trace the soak's agent with memray, its capture here; report what held memory at the end",
    )
    args = parser.parse_args(argv)
    for item in [*args.agent_env, *args.agent_option]:
        if "=" not in item:
            parser.error(f"{item!r} is not NAME=VALUE")
    if args.memray and args.idle:
        parser.error("--memray traces a soak; its overhead would be the idle figures")
    variant = Variant(
        env=dict(item.split("=", 1) for item in args.agent_env),
        options={
            name: yaml.safe_load(value) for name, _, value in (o.partition("=") for o in args.agent_option)
        },
        memray=args.memray.resolve() if args.memray else None,
    )
    if args.idle:
        for n in [args.containers] if args.containers else [3, 100]:
            idle(args.minutes or 1.0, n, variant)
    else:
        soak(args.minutes or 3.0, args.containers or 50, variant)


if __name__ == "__main__":
    main()
