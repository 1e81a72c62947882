"""Field types every dialect's request models share: integers that are never true/false (pydantic's lax
mode reads true as 1: `"organization": true` dedicated a node) and are bounded, and text that refuses
control characters (NUL, ANSI escapes, bidi marks, newlines) where it names something."""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field

#: Organization ids and the like: what every database's 32-bit integer holds.
MAX_ID = 2**31 - 1


def not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be a number, not true or false")
    return value


def printable(value: str) -> str:
    """No control or format characters (Unicode Cc and Cf: NUL, ESC, newlines, bidi marks)."""
    for ch in value:
        if unicodedata.category(ch) in ("Cc", "Cf"):
            raise ValueError(f"contains the control character U+{ord(ch):04X}")
    return value


#: How deep JSON from a client may nest (no model here needs more than a few levels).
MAX_DEPTH = 32


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


#: A boolean given as true or false (never 0, 1 or a string): for bodies; query strings say "true".
Bool = Annotated[bool, Field(strict=True)]
#: An integer given as a number (never true/false).
Int = Annotated[int, BeforeValidator(not_bool)]
#: An organization's id.
OrganizationId = Annotated[int, BeforeValidator(not_bool), Field(ge=1, le=MAX_ID)]
#: A name, label or address: printable text.
Text = Annotated[str, AfterValidator(printable)]

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def _ip(value: str) -> str | None:
    """The IP literal, normalised; None when it is not one. An IPv6 zone ("fe80::1%eth0") is refused:
    Python takes any text after the %, Docker and certificates take none."""
    if "%" in value:
        return None
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        return None


def host_or_ip(value: str) -> str:
    """A DNS host name (RFC 1123 labels) or an IP literal: what agents and panels can dial, and what a
    server's certificate can name."""
    printable(value)
    if _ip(value) is not None:
        return value
    name = value.rstrip(".")
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise ValueError(f"{value[:80]!r} is not a host name or an IP address")
    return value


def ip_literal(value: str) -> str:
    """An IPv4 or IPv6 address (a bind address: anything else would publish on every interface)."""
    found = _ip(value)
    if found is None:
        raise ValueError(f"{value[:80]!r} is not an IP address (an IPv6 zone is not taken)")
    return found


#: A node's address: a host name or an IP literal.
Address = Annotated[str, AfterValidator(host_or_ip)]
#: Where allocations bind: an IP literal.
BindAddress = Annotated[str, AfterValidator(ip_literal)]
