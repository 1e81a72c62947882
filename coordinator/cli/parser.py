"""The CLI's arguments: every command and its options. Each command sets ``run``, the function in
commands.py that carries it out."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from coordinator.cli.client import DEFAULT_URL, LOCAL_KEY_FILE


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


def parse_port_range(value: str) -> tuple[int, int]:
    """30000-30099 (or one port)."""
    first, _, last = value.partition("-")
    try:
        start, end = int(first), int(last or first)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a port or a range like 30000-30099, got {value!r}"
        ) from None
    if not 1 <= start <= end <= 65535:
        raise argparse.ArgumentTypeError(f"ports must be 1-65535, the range ascending, got {value!r}")
    return start, end


def parse_switch(value: str) -> bool:
    if value not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, got {value!r}")
    return value == "on"


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


Runner = Callable[..., Any]


def build_parser(handlers: dict[str, Runner] | None = None) -> argparse.ArgumentParser:
    """``handlers``: command path ("node create") -> its function; absent in tests of the arguments."""
    handlers = handlers or {}
    common = argparse.ArgumentParser(add_help=False)
    _globals(common, argparse.SUPPRESS)
    p = argparse.ArgumentParser(prog="moorage", description="Operate a Moorage fleet over the REST API.")
    _globals(p, None)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(parent: Any, path: str, help_text: str) -> argparse.ArgumentParser:
        made: argparse.ArgumentParser = parent.add_parser(
            path.rsplit(" ", 1)[-1], parents=[common], help=help_text
        )
        made.set_defaults(run=handlers.get(path), path=path)
        return made

    def group(name: str, help_text: str) -> Any:
        return sub.add_parser(name, help=help_text).add_subparsers(
            dest=f"{name}_command", required=True, metavar="COMMAND"
        )

    command(sub, "health", "the coordinator's health")

    # -------------------------------------------------------- regions
    command(sub, "regions", "regions with servers placed against their limit")
    region = group("region", "region commands")
    made = command(region, "region create", "create a region")
    made.add_argument("name")
    made.add_argument("identifier", help="2-20 lowercase letters, digits or '-', e.g. eu-west")
    made.add_argument("--limit", type=int, help="serverLimit: live instances it may hold (100)")
    made.add_argument("--country", help="ISO 3166 country code, e.g. IE")
    made.add_argument("--fallback", metavar="REGION_ID", help="where placement goes when it is full")
    changed = command(region, "region update", "change a region")
    changed.add_argument("id")
    changed.add_argument("--name")
    changed.add_argument("--limit", type=int)
    changed.add_argument("--country")
    fallback = changed.add_mutually_exclusive_group()
    fallback.add_argument("--fallback", metavar="REGION_ID")
    fallback.add_argument("--no-fallback", action="store_true", help="clear the fallback region")
    command(region, "region delete", "delete a region (no nodes, not a fallback)").add_argument("id")

    # -------------------------------------------------------- nodes
    command(sub, "nodes", "nodes with status and heartbeat age")
    node = group("node", "node commands")
    create = command(node, "node create", "create a node; prints its join token and agent command")
    create.add_argument("name")
    create.add_argument("--ram", type=int, required=True, metavar="MIB", help="memory for instances")
    create.add_argument("--disk", type=int, required=True, metavar="MIB", help="disk for instances")
    create.add_argument("--cpus", type=int, required=True, metavar="N", help="CPU cores for instances")
    create.add_argument("--address", required=True, help="the host's public address or FQDN")
    create.add_argument("--port", type=int, default=8080, help="the node port panels show (8080)")
    create.add_argument("--tags", default="", help="comma-separated tags")
    create.add_argument("--ports", metavar="RANGES", help="allocations, e.g. 30000-30099,25565")
    create.add_argument("--bind", default="0.0.0.0", help="bind address of the allocations (0.0.0.0)")
    create.add_argument("--region", metavar="REGION_ID")
    command(node, "node join-token", "a fresh join token (voids the last one)").add_argument("id")
    maintenance = command(node, "node maintenance", "nothing new is placed on a node in maintenance")
    maintenance.add_argument("id")
    maintenance.add_argument("state", type=parse_switch, metavar="on|off")
    command(node, "node allocations", "a node's allocations").add_argument("id")
    added = command(node, "node allocation-add", "add allocations to a node")
    added.add_argument("id")
    added.add_argument("ports", type=parse_port_range, metavar="PORT|FIRST-LAST")
    added.add_argument("--bind", default="0.0.0.0", help="bind address (0.0.0.0)")
    removed = command(node, "node allocation-remove", "remove a free allocation")
    removed.add_argument("id")
    removed.add_argument("allocation", metavar="ALLOCATION_ID")
    command(node, "node delete", "delete a node (its agent stops)").add_argument("id")

    # -------------------------------------------------------- instances
    command(sub, "instances", "instances")
    inst = group("instance", "instance commands")
    command(inst, "instance show", "one instance").add_argument("id")
    power = command(inst, "instance power", "start, stop, restart or kill an instance")
    power.add_argument("id")
    power.add_argument("action", choices=["start", "stop", "restart", "kill"])
    command(inst, "instance suspend", "stop it and refuse starts until unsuspended").add_argument("id")
    command(inst, "instance unsuspend", "allow starts again and start it").add_argument("id")
    command(inst, "instance delete", "delete (release) an instance").add_argument("id")
    output = command(sub, "logs", "an instance's output: the last lines, or -f to follow")
    output.add_argument("id")
    output.add_argument("-f", "--follow", action="store_true", help="print what it writes next")
    output.add_argument("--tail", type=int, default=100, metavar="N", help="the last N lines (100)")
    deploy = command(sub, "deploy", "deploy an instance on a node")
    deploy.add_argument("--node", required=True, help="node id")
    deploy.add_argument("--image", required=True, help="catalog name or Docker reference")
    deploy.add_argument("--memory", type=int, required=True, metavar="MIB")
    deploy.add_argument("--cpu", type=int, required=True, metavar="PCT", help="percent of one core")
    deploy.add_argument("--name", help="instance name (default: from the image)")
    deploy.add_argument("--ports", type=parse_port_list, default=[], help="allocations to claim, e.g. 1,2")
    deploy.add_argument("--var", type=parse_var, action="append", default=[], metavar="K=V")
    command(sub, "delete", "delete (release) an instance").add_argument("id")

    # -------------------------------------------------------- people and keys
    command(sub, "users", "users")
    user = group("user", "user commands")
    person = command(user, "user create", "create a user (the password is read from stdin)")
    person.add_argument("username")
    person.add_argument("email")
    person.add_argument("--admin", action="store_true")
    person.add_argument("--organization", type=int, metavar="ID")
    command(sub, "keys", "your API keys")
    key = group("key", "API key commands")
    command(key, "key create", "a new API key for you; shown once").add_argument("name")
    command(key, "key revoke", "revoke one of your API keys").add_argument("id")

    # -------------------------------------------------------- events and webhooks
    told = command(sub, "events", "what changed in the fleet: the last events, or -f to follow")
    told.add_argument("-f", "--follow", action="store_true", help="print each event as it happens")
    told.add_argument("--after", type=int, metavar="ID", help="events after this id")
    told.add_argument("--limit", type=int, default=50, choices=range(1, 1001), metavar="N", help="(50)")
    command(sub, "webhooks", "webhooks and how their delivery goes")
    hook = group("webhook", "webhook commands")
    made_hook = command(hook, "webhook create", "POST events to a URL; prints its secret once")
    made_hook.add_argument("target", metavar="URL", help="http(s) URL to POST events to")  # not --url
    made_hook.add_argument("--kinds", help="only these kinds, comma-separated (e.g. node.status)")
    made_hook.add_argument("--description", default="")
    command(hook, "webhook delete", "stop delivering to a webhook").add_argument("id")
    return p
