"""moorage: the operator CLI over the coordinator's REST API.

Only the standard library, so it runs from any checkout or host with Python, without the coordinator's
dependencies. Tables are for people; ``--json`` prints the API's own answer for scripts. Exit status: 0 on
success, 1 when the API refused the request, 2 when the coordinator could not be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8080"
#: Where `make run` keeps the admin key; used when neither --key nor MOORAGE_API_KEY is given.
LOCAL_KEY_FILE = Path(".moorage/coordinator/admin.key")
EXIT_API = 1
EXIT_UNREACHABLE = 2


class ApiError(Exception):
    """The coordinator answered with an error status."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


class Unreachable(Exception):
    """No answer at all: wrong URL, coordinator down, network trouble."""


def error_from_body(status: int, body: bytes, reason: str = "") -> ApiError:
    """The API's {"error", "field"} body, or whatever text came back (a proxy's page, say)."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        field = data.get("field")
        return ApiError(status, data["error"], field if isinstance(field, str) else None)
    text = body.decode(errors="replace").strip().splitlines()
    return ApiError(status, (text[0][:200] if text else "") or reason or "request failed")


def render_error(exc: ApiError) -> str:
    return f"moorage: {exc.status} {exc.message}"


@dataclass(frozen=True, slots=True)
class Client:
    url: str
    key: str | None
    timeout_s: float = 60.0  # a delete waits for the agent (fleet.command_wait_s) before answering

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        headers = {"Accept": "application/json"}
        if self.key:
            headers["x-api-key"] = self.key
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url.rstrip("/") + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                raise error_from_body(exc.code, exc.read(), str(exc.reason)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise Unreachable(f"cannot reach the coordinator at {self.url}: {reason}") from exc
        return json.loads(raw) if raw.strip() else None


# ---------------------------------------------------------------- formatting


def format_age(seconds: float | None) -> str:
    """Heartbeat age, short enough for a column: 2.1s, 4m05s, 3h12m, 2d07h; "-" when never seen."""
    if seconds is None:
        return "-"
    if seconds < 59.95:  # so 59.96 is "1m00s", not "60.0s"
        return f"{max(seconds, 0.0):.1f}s"
    s = round(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart; no trailing blanks, so output diffs and greps cleanly."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in [headers, *rows]
    ]
    return "\n".join(lines)


def node_rows(nodes: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            n["id"][:8],
            n["name"],
            n["status"],
            "yes" if n["isOnline"] else "no",
            format_age(n.get("heartbeatAgeSeconds")),
            f"{n['allocations']['assigned']}/{n['allocations']['total']}",
            n["address"],
        ]
        for n in nodes
    ]


NODE_HEADERS = ["ID", "NAME", "STATUS", "ONLINE", "HEARTBEAT AGE", "ALLOC", "ADDRESS"]
INSTANCE_HEADERS = ["ID", "NAME", "STATE", "NODE", "PORTS", "IMAGE"]


def instance_rows(instances: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            i["id"],
            i["name"],
            i["state"],
            (i.get("nodeId") or "-")[:8],
            ",".join(str(p) for p in i["ports"]) or "-",
            i["image"],
        ]
        for i in instances
    ]


def describe_instance(i: dict[str, Any]) -> str:
    ports = ", ".join(
        f"{a['bindAddress']}:{a['port']}{' (primary)' if a['primary'] else ''}" for a in i["allocations"]
    )
    fields = [
        ("id", i["id"]),
        ("name", i["name"]),
        ("state", f"{i['state']} ({i['InternalState']}{', suspended' if i['suspended'] else ''})"),
        ("error", i.get("error") or "-"),
        ("node", i.get("nodeId") or "-"),
        ("image", i["image"] if i["image"] == i["Image"] else f"{i['image']} ({i['Image']})"),
        ("memory", f"{i['Memory']} MiB"),
        ("cpu", f"{i['Cpu']}%"),
        ("ports", ports or "-"),
        ("container", i.get("ContainerId") or "-"),
        ("created", i.get("createdAt") or "-"),
        ("delivered", i.get("deliveredAt") or "-"),
        ("released", i.get("releasedAt") or "-"),
    ]
    fields += [(f"env {k}", v) for k, v in sorted(i.get("Variables", {}).items())]
    width = max(len(k) for k, _ in fields)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in fields)


# ---------------------------------------------------------------- arguments


def parse_var(value: str) -> tuple[str, str]:
    name, sep, val = value.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    return name, val


def parse_port_list(value: str) -> list[int]:
    try:
        ports = [int(p) for p in value.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ports like 25565,25566, got {value!r}") from None
    if not ports or any(not 1 <= p <= 65535 for p in ports):
        raise argparse.ArgumentTypeError(f"ports must be 1-65535, got {value!r}")
    return ports


def _globals(parser: argparse.ArgumentParser, default: Any) -> None:
    """The global options, accepted before or after the command (``moorage nodes --json``). Subcommands use
    SUPPRESS so an option given before the command is not reset by the subparser's default."""
    suppress = default is argparse.SUPPRESS
    parser.add_argument("--url", default=default, help=f"coordinator API (env MOORAGE_URL; {DEFAULT_URL})")
    parser.add_argument(
        "--key", default=default, help=f"API key (env MOORAGE_API_KEY; else {LOCAL_KEY_FILE} if present)"
    )
    parser.add_argument(
        "--json", action="store_true", default=default if suppress else False, help="print the raw JSON"
    )


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _globals(common, argparse.SUPPRESS)
    p = argparse.ArgumentParser(prog="moorage", description="Operate a Moorage fleet over the REST API.")
    _globals(p, None)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("health", parents=[common], help="the coordinator's health")
    sub.add_parser("nodes", parents=[common], help="nodes with status and heartbeat age")
    node = sub.add_parser("node", help="node commands").add_subparsers(
        dest="node_command", required=True, metavar="COMMAND"
    )
    create = node.add_parser("create", parents=[common], help="create a node; prints its join token")
    create.add_argument("name")
    create.add_argument("--ram", type=int, required=True, metavar="MIB", help="memory for instances")
    create.add_argument("--disk", type=int, required=True, metavar="MIB", help="disk for instances")
    create.add_argument("--cpus", type=int, required=True, metavar="N", help="CPU cores for instances")
    create.add_argument("--address", required=True, help="the host's public address or FQDN")
    create.add_argument("--port", type=int, default=8080, help="the node port panels show (8080)")
    create.add_argument("--tags", default="", help="comma-separated tags")
    create.add_argument("--ports", metavar="RANGES", help="allocations, e.g. 30000-30099,25565")
    create.add_argument("--bind", default="0.0.0.0", help="bind address of the allocations (0.0.0.0)")
    sub.add_parser("instances", parents=[common], help="instances")
    inst = sub.add_parser("instance", help="instance commands").add_subparsers(
        dest="instance_command", required=True, metavar="COMMAND"
    )
    inst.add_parser("show", parents=[common], help="one instance").add_argument("id")
    deploy = sub.add_parser("deploy", parents=[common], help="deploy an instance on a node")
    deploy.add_argument("--node", required=True, help="node id")
    deploy.add_argument("--image", required=True, help="catalog name or Docker reference")
    deploy.add_argument("--memory", type=int, required=True, metavar="MIB")
    deploy.add_argument("--cpu", type=int, required=True, metavar="PCT", help="percent of one core")
    deploy.add_argument("--name", help="instance name (default: from the image)")
    deploy.add_argument("--ports", type=parse_port_list, default=[], help="allocations to claim, e.g. 1,2")
    deploy.add_argument("--var", type=parse_var, action="append", default=[], metavar="K=V")
    sub.add_parser("delete", parents=[common], help="delete (release) an instance").add_argument("id")
    return p


def resolve_key(given: str | None, environ: Mapping[str, str]) -> str | None:
    if given:
        return given
    if environ.get("MOORAGE_API_KEY"):
        return environ["MOORAGE_API_KEY"]
    try:
        return LOCAL_KEY_FILE.read_text().strip() or None
    except OSError:
        return None


def default_name(image: str) -> str:
    """ "ghcr.io/pterodactyl/yolks:java_17" -> "yolks"; a catalog name stays itself."""
    return image.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0] or "instance"


# ---------------------------------------------------------------- commands


def execute(args: argparse.Namespace, client: Client) -> tuple[Any, str]:
    """Run the command; returns the API's answer (for --json) and its text for people."""
    cmd = args.command
    if cmd == "health":
        h = client.call("GET", "/api/health")
        connected = h["nodesConnected"]
        return h, f"{h['status']}: version {h['version']}, {h['database']}, {connected} node(s) connected"
    if cmd == "nodes":
        nodes = client.call("GET", "/api/nodes")
        return nodes, format_table(NODE_HEADERS, node_rows(nodes))
    if cmd == "node":
        body: dict[str, Any] = {
            "name": args.name,
            "ram": args.ram,
            "disk": args.disk,
            "processor": args.cpus,
            "address": args.address,
            "port": args.port,
            "tags": [t.strip() for t in args.tags.split(",") if t.strip()],
        }
        if args.ports:
            body["allocations"] = {"bindAddress": args.bind, "ports": args.ports}
        n = client.call("POST", "/api/nodes/create", body)
        text = (
            f"node {n['id']} ({n['name']}) created with {len(n['allocationList'])} allocation(s)\n"
            f"join token (one-time, expires {n['joinTokenExpiresAt']}):\n  {n['joinToken']}\n"
            f"run on the host:\n  {n['agentCommand']}"
        )
        return n, text
    if cmd == "instances":
        instances = client.call("GET", "/api/instances")
        return instances, format_table(INSTANCE_HEADERS, instance_rows(instances))
    if cmd == "instance":
        i = client.call("POST", "/api/getInstance", {"id": args.id})
        return i, describe_instance(i)
    if cmd == "deploy":
        body = {
            "nodeId": args.node,
            "image": args.image,
            "memory": args.memory,
            "cpu": args.cpu,
            "name": args.name or default_name(args.image),
            "ports": args.ports,
            "variables": dict(args.var),
        }
        i = client.call("POST", "/api/instances/deploy", body)
        ports = ",".join(str(p) for p in i["ports"]) or "-"
        return i, f"instance {i['id']} ({i['name']}) {i['state']} on node {i['nodeId']}, ports {ports}"
    if cmd == "delete":
        i = client.call("DELETE", "/api/instance/delete", {"id": args.id})
        return i, f"instance {i['id']} ({i['name']}) {i['state']}"
    raise AssertionError(f"unhandled command {cmd}")


def run(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    client = Client(
        url=args.url or os.environ.get("MOORAGE_URL") or DEFAULT_URL,
        key=resolve_key(args.key, os.environ),
    )
    try:
        answer, text = execute(args, client)
    except ApiError as exc:
        print(render_error(exc), file=sys.stderr)
        if exc.status == 401 and client.key is None:
            print("moorage: give --key or set MOORAGE_API_KEY", file=sys.stderr)
        return EXIT_API
    except Unreachable as exc:
        print(f"moorage: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(json.dumps(answer, indent=2) if args.json else text)
    return 0


def main() -> None:
    raise SystemExit(run())


if __name__ == "__main__":
    main()
