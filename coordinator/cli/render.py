"""What the CLI prints for people: tables two spaces apart and key-value blocks (``--json`` prints the API's
own answer instead)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


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


REGION_HEADERS = ["ID", "IDENTIFIER", "NAME", "SERVERS", "NODES", "ONLINE", "FALLBACK"]


def region_rows(regions: list[dict[str, Any]]) -> list[list[str]]:
    """Servers placed against the region's serverLimit, with a bar a person reads at a glance."""
    rows = []
    for r in regions:
        used, limit = r["stats"]["serverCount"], r["serverLimit"]
        fallback = r.get("fallbackRegion") or {}
        rows.append(
            [
                r["id"][:8],
                r["identifier"],
                r["name"],
                f"{used}/{limit} {capacity_bar(used, limit)}{' full' if r['stats']['atCapacity'] else ''}",
                str(r["stats"]["nodeCount"]),
                str(r["stats"]["onlineNodeCount"]),
                fallback.get("name") or "-",
            ]
        )
    return rows


def capacity_bar(used: int, limit: int, width: int = 10) -> str:
    filled = min(width, round(width * used / limit)) if limit > 0 else width
    return "[" + "#" * filled + "." * (width - filled) + "]"


ALLOCATION_HEADERS = ["ID", "ADDRESS", "PORT", "ASSIGNED", "ALIAS"]


def allocation_rows(allocations: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [a["id"], a["bindAddress"], str(a["port"]), "yes" if a["assigned"] else "no", a.get("alias") or "-"]
        for a in allocations
    ]


USER_HEADERS = ["ID", "USERNAME", "EMAIL", "ADMIN", "ORGANIZATION"]


def user_rows(users: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [u["userId"], u["username"], u["email"], "yes" if u["admin"] else "no", str(u["organizationId"])]
        for u in users
    ]


KEY_HEADERS = ["ID", "NAME", "PREFIX", "CREATED", "LAST USED", "REVOKED"]


def key_rows(keys: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            k["id"],
            k["name"],
            k["prefix"],
            k.get("createdAt") or "-",
            k.get("lastUsedAt") or "-",
            k.get("revokedAt") or "-",
        ]
        for k in keys
    ]


EVENT_HEADERS = ["ID", "AT", "KIND", "ABOUT", "WHAT"]


def event_what(e: dict[str, Any], arrow: str = "->") -> str:
    """One event's news in a few words: "running -> unhealthy: the container exited with code 1" (the
    status page says the same, with its own arrow)."""
    d = e.get("data") or {}
    kind = e.get("kind")
    if kind in ("instance.state", "node.status"):
        said = f"{d.get('old')} {arrow} {d.get('new')}"
        return f"{said}: {d['error']}" if d.get("error") else said
    if kind == "instance.placed":
        return f"placed{' in region ' + str(d['regionId']) if d.get('regionId') else ''}"
    if kind == "instance.crashed":
        return f"crashed: {d.get('error')}"
    if kind == "placement.refused":
        return f"refused: {d.get('reason')}"
    return json.dumps(d, separators=(",", ":"))


def event_rows(events: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            str(e["id"]),
            e.get("at") or "-",
            e["kind"],
            e.get("instanceId") or e.get("nodeId") or "-",
            event_what(e),
        ]
        for e in events
    ]


def event_line(e: dict[str, Any]) -> str:
    """An event followed live: the row's cells, two spaces apart."""
    return "  ".join(event_rows([e])[0])


WEBHOOK_HEADERS = ["ID", "URL", "KINDS", "DELIVERED", "FAILURES", "DROPPED", "LAST ERROR"]


def webhook_rows(hooks: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            h["id"],
            h["url"],
            ",".join(h["kinds"]) if h.get("kinds") else "all",
            str(h["delivered"]),
            str(h["failures"]),
            str(h["dropped"]),
            h.get("lastError") or "-",
        ]
        for h in hooks
    ]
