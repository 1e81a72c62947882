"""The CLI's commands: each calls the REST API and returns (the API's answer, its text for people).

Only the standard library, so it runs from any checkout or host with Python, without the coordinator's
dependencies. Tables are for people; ``--json`` prints the API's own answer for scripts. Exit status: 0 on
success, 1 when the API refused the request or could not be reached, 2 for a usage error (argparse's)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from coordinator.cli import render
from coordinator.cli.client import DEFAULT_URL, ApiError, Client, Unreachable, render_error, resolve_key
from coordinator.cli.parser import build_parser

EXIT_API = 1
EXIT_USAGE = 2
#: A coordinator that cannot be reached is the API failing too.
EXIT_UNREACHABLE = EXIT_API

Answer = tuple[Any, str]


def default_name(image: str) -> str:
    """ "ghcr.io/pterodactyl/yolks:java_17" -> "yolks"; a catalog name stays itself."""
    return image.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0] or "instance"


def health(args: argparse.Namespace, client: Client) -> Answer:
    h = client.call("GET", "/api/health")
    leader = ", leader" if h.get("leader") else ""
    return h, (
        f"{h['status']}: version {h['version']}, {h['database']}, {h['nodesConnected']} node(s) connected"
        f"{leader}"
    )


def _listing(
    path: str, headers: Sequence[str], rows: Callable[[list[dict[str, Any]]], list[list[str]]]
) -> Callable[[argparse.Namespace, Client], Answer]:
    """A command that lists what ``path`` (with the command's ``id``, if any) answers, as a table."""

    def listing(args: argparse.Namespace, client: Client) -> Answer:
        found = client.call("GET", path.format(id=getattr(args, "id", "")))
        return found, render.format_table(headers, rows(found))

    return listing


regions = _listing("/api/regions", render.REGION_HEADERS, render.region_rows)
nodes = _listing("/api/nodes", render.NODE_HEADERS, render.node_rows)
node_allocations = _listing("/api/nodes/{id}/allocations", render.ALLOCATION_HEADERS, render.allocation_rows)
instances = _listing("/api/instances", render.INSTANCE_HEADERS, render.instance_rows)
users = _listing("/api/users", render.USER_HEADERS, render.user_rows)
webhooks = _listing("/api/webhooks", render.WEBHOOK_HEADERS, render.webhook_rows)

#: What a command that printed as it went returns: nothing more to print.
PRINTED = object()


# ------------------------------------------------------------ events and webhooks


def events(args: argparse.Namespace, client: Client) -> Answer:
    """The last events (oldest first), or with -f every one from now (or --after) as it happens."""
    if args.follow:
        for event in client.follow("/api/events", args.after):
            print(json.dumps(event) if args.json else render.event_line(event), flush=True)
        return PRINTED, ""
    if args.after is None:  # the newest --limit events
        found = client.call("GET", f"/api/events?last=true&limit={args.limit}")
    else:
        found = client.call("GET", f"/api/events?after={args.after}&limit={args.limit}")
    return found, render.format_table(render.EVENT_HEADERS, render.event_rows(found))


def logs(args: argparse.Namespace, client: Client) -> Answer:
    """The instance's last --tail lines; with -f what it writes next, until Ctrl-C or the output ends."""
    path = f"/api/instances/{args.id}/logs?tail={args.tail}"
    if not args.follow:
        found = client.call("GET", path)
        text = "\n".join(found["lines"])
        if found.get("error"):
            text += f"\n(moorage: the output ended early: {found['error']})"
        return found, text
    for event in client.follow(path + "&follow=true", resume=False):
        if "lines" in event:
            for line in event["lines"]:
                print(json.dumps(line) if args.json else line, flush=True)
        elif event.get("error"):
            print(f"moorage: the output ended: {event['error']}", file=sys.stderr)
    return PRINTED, ""


def webhook_create(args: argparse.Namespace, client: Client) -> Answer:
    body: dict[str, Any] = {"url": args.target, "description": args.description}
    if args.kinds:
        body["kinds"] = [k for k in args.kinds.split(",") if k]
    h = client.call("POST", "/api/webhooks", body)
    return h, (
        f"webhook {h['id']} created for {h['url']}\n"
        f"secret (shown once; it signs each POST, header X-Moorage-Signature-256): {h['secret']}"
    )


def webhook_delete(args: argparse.Namespace, client: Client) -> Answer:
    client.call("DELETE", f"/api/webhooks/{args.id}")
    return None, f"webhook {args.id} deleted"


keys = _listing("/api/keys", render.KEY_HEADERS, render.key_rows)


# ------------------------------------------------------------ regions


def region_create(args: argparse.Namespace, client: Client) -> Answer:
    body: dict[str, Any] = {"name": args.name, "identifier": args.identifier}
    for option, field in (
        ("limit", "serverLimit"),
        ("country", "countryId"),
        ("fallback", "fallbackRegionId"),
    ):
        if getattr(args, option) is not None:
            body[field] = getattr(args, option)
    r = client.call("POST", "/api/regions", body)
    return r, f"region {r['id']} ({r['identifier']}) created, serverLimit {r['serverLimit']}"


def region_update(args: argparse.Namespace, client: Client) -> Answer:
    body: dict[str, Any] = {}
    for option, field in (("name", "name"), ("limit", "serverLimit"), ("country", "countryId")):
        if getattr(args, option) is not None:
            body[field] = getattr(args, option)
    if args.fallback is not None or args.no_fallback:
        body["fallbackRegionId"] = args.fallback
    if not body:
        raise ApiError(400, "nothing to change: give --name, --limit, --country, --fallback or --no-fallback")
    r = client.call("PATCH", f"/api/regions/{args.id}", body)
    return r, f"region {r['id']} ({r['identifier']}) updated, serverLimit {r['serverLimit']}"


def region_delete(args: argparse.Namespace, client: Client) -> Answer:
    client.call("DELETE", f"/api/regions/{args.id}")
    return None, f"region {args.id} deleted"


# ------------------------------------------------------------ nodes


def node_create(args: argparse.Namespace, client: Client) -> Answer:
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
    if args.region:
        body["regionId"] = args.region
    n = client.call("POST", "/api/nodes/create", body)
    text = (
        f"node {n['id']} ({n['name']}) created with {len(n['allocationList'])} allocation(s)\n"
        f"join token (one-time, expires {n['joinTokenExpiresAt']}):\n  {n['joinToken']}\n"
        f"run on the host:\n  {n['agentCommand']}"
    )
    return n, text


def node_join_token(args: argparse.Namespace, client: Client) -> Answer:
    t = client.call("POST", f"/api/nodes/{args.id}/join-token")
    return t, (
        f"join token (one-time, expires {t['expiresAt']}; the node's last one no longer works):\n"
        f"  {t['joinToken']}\nrun on the host:\n  {t['agentCommand']}"
    )


def node_maintenance(args: argparse.Namespace, client: Client) -> Answer:
    n = client.call("PATCH", f"/api/nodes/{args.id}", {"maintenance": args.state})
    return n, f"node {args.id} maintenance {'on' if n['maintenance'] else 'off'}"


def node_allocation_add(args: argparse.Namespace, client: Client) -> Answer:
    start, end = args.ports
    body: dict[str, Any] = {"bindAddress": args.bind}
    body.update({"port": start} if start == end else {"portRange": {"start": start, "end": end}})
    made = client.call("POST", f"/api/nodes/{args.id}/allocations", body)
    count = len(made) if isinstance(made, list) else 1
    return made, f"{count} allocation(s) added to node {args.id}"


def node_allocation_remove(args: argparse.Namespace, client: Client) -> Answer:
    client.call("DELETE", f"/api/nodes/{args.id}/allocations/{args.allocation}")
    return None, f"allocation {args.allocation} removed from node {args.id}"


def node_delete(args: argparse.Namespace, client: Client) -> Answer:
    gone = client.call("DELETE", "/api/nodes/delete", {"nodeId": args.id})
    return gone, f"node {args.id} deleted"


# ------------------------------------------------------------ instances


def instance_show(args: argparse.Namespace, client: Client) -> Answer:
    i = client.call("POST", "/api/getInstance", {"id": args.id})
    return i, render.describe_instance(i)


def _said(i: dict[str, Any]) -> str:
    return f"instance {i['id']} ({i['name']}) {i['state']}"


def instance_power(args: argparse.Namespace, client: Client) -> Answer:
    i = client.call("POST", f"/api/instances/{args.id}/power", {"action": args.action})
    return i, _said(i)


def instance_suspend(args: argparse.Namespace, client: Client) -> Answer:
    i = client.call("POST", f"/api/instances/suspend/{args.id}")
    return i, _said(i) + ", suspended"


def instance_unsuspend(args: argparse.Namespace, client: Client) -> Answer:
    i = client.call("POST", f"/api/instances/unsuspend/{args.id}")
    return i, _said(i)


def instance_delete(args: argparse.Namespace, client: Client) -> Answer:
    i = client.call("DELETE", "/api/instance/delete", {"id": args.id})
    return i, _said(i)


def deploy(args: argparse.Namespace, client: Client) -> Answer:
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


# ------------------------------------------------------------ people and keys


def user_create(args: argparse.Namespace, client: Client) -> Answer:
    password = sys.stdin.readline().rstrip("\n")
    body: dict[str, Any] = {
        "username": args.username,
        "email": args.email,
        "password": password,
        "admin": args.admin,
    }
    if args.organization is not None:
        body["organization"] = args.organization
    u = client.call("POST", "/api/auth/create-user", body)
    return u, f"user {u['userId']} ({u['username']}) created{' (admin)' if u['admin'] else ''}"


def key_create(args: argparse.Namespace, client: Client) -> Answer:
    k = client.call("POST", "/api/keys", {"name": args.name})
    return k, f"key {k['id']} ({k['name']}) created; it is shown only now:\n  {k['key']}"


def key_revoke(args: argparse.Namespace, client: Client) -> Answer:
    client.call("DELETE", f"/api/keys/{args.id}")
    return None, f"key {args.id} revoked"


HANDLERS = {
    "health": health,
    "regions": regions,
    "region create": region_create,
    "region update": region_update,
    "region delete": region_delete,
    "nodes": nodes,
    "node create": node_create,
    "node join-token": node_join_token,
    "node maintenance": node_maintenance,
    "node allocations": node_allocations,
    "node allocation-add": node_allocation_add,
    "node allocation-remove": node_allocation_remove,
    "node delete": node_delete,
    "instances": instances,
    "instance show": instance_show,
    "instance power": instance_power,
    "instance suspend": instance_suspend,
    "instance unsuspend": instance_unsuspend,
    "instance delete": instance_delete,
    "deploy": deploy,
    "delete": instance_delete,
    "users": users,
    "user create": user_create,
    "keys": keys,
    "key create": key_create,
    "key revoke": key_revoke,
    "events": events,
    "logs": logs,
    "webhooks": webhooks,
    "webhook create": webhook_create,
    "webhook delete": webhook_delete,
}


def parser() -> argparse.ArgumentParser:
    return build_parser(HANDLERS)


def run(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)  # a usage error exits 2 here
    client = Client(
        url=args.url or os.environ.get("MOORAGE_URL") or DEFAULT_URL,
        key=resolve_key(args.key, os.environ),
    )
    try:
        answer, text = args.run(args, client)
    except ApiError as exc:
        print(render_error(exc), file=sys.stderr)
        if exc.status == 401 and client.key is None:
            print("moorage: give --key or set MOORAGE_API_KEY", file=sys.stderr)
        return EXIT_API
    except Unreachable as exc:
        print(f"moorage: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:  # the end of following, as the user meant it
        return 0
    if answer is not PRINTED:
        print(json.dumps(answer, indent=2) if args.json else text)
    return 0


def main() -> None:
    raise SystemExit(run())
