"""How Skyport's clients write numbers and ports, read into ours. Skyport itself took `parseInt` of what it
got and split ports on "," and ":"; its dashboards send `"512"`, `"512MB"`, `"34005:34005"`,
`"25565:25565,25566:25566"`. We accept those forms, and refuse what would mean something we do not do
(a container port other than its host port, an unknown unit) with the reason, instead of guessing."""

from __future__ import annotations

import re
from typing import Any

#: Memory and disk: a whole number with an optional unit; MiB without one.
_SIZE = re.compile(r"^\s*(\d+)\s*([A-Za-z]*)\s*$")
_UNITS = {"": 1, "M": 1, "MB": 1, "G": 1024, "GB": 1024}
_CPU = re.compile(r"^\s*(\d+)\s*%?\s*$")


def mebibytes(value: Any) -> Any:
    """512, "512", "512MB", "512M" -> 512; "1G", "1GB" -> 1024. Anything else is left for the integer
    check to refuse (a fraction), except a string with a unit we do not know and a bool: refused here."""
    if isinstance(value, bool):
        raise ValueError("must be a number of MiB, not true or false")
    if isinstance(value, str):
        found = _SIZE.fullmatch(value)
        if found is None:
            raise ValueError(
                f"{value!r} is not a whole number of MiB (optionally with a unit: MB, M, GB or G)"
            )
        number, unit = found.groups()
        factor = _UNITS.get(unit.upper())
        if factor is None:
            raise ValueError(f"unknown unit {unit!r} (use MB, M, GB or G)")
        return int(number) * factor
    return value


def percent(value: Any) -> Any:
    """CPU in percent of one core: 50, "50", "50%"."""
    if isinstance(value, bool):
        raise ValueError("must be a percentage, not true or false")
    if isinstance(value, str):
        found = _CPU.fullmatch(value)
        if found is None:
            raise ValueError(f'{value!r} is not a whole percentage of one core (e.g. 50 or "50%")')
        return int(found.group(1))
    return value


def host_port(value: Any) -> Any:
    """One port as Skyport's clients write it: 25565, "25565" or "25565:25565" (container:host) -> 25565.
    Moorage publishes every allocation on the same port inside the container, so a pair whose two ports
    differ is refused rather than silently bound elsewhere."""
    if isinstance(value, bool):
        raise ValueError("must be a port, not true or false")
    if not isinstance(value, int | str):
        return value  # left for the integer check to refuse
    if isinstance(value, int):
        return value
    text = value.strip()
    if ":" not in text:
        if not (text.isascii() and text.isdigit()):
            raise ValueError(f"{value!r} is not a port or a container:host pair")
        return int(text)
    container, _, host = (part.strip() for part in text.partition(":"))
    if not (container.isascii() and container.isdigit() and host.isascii() and host.isdigit()):
        raise ValueError(f"{value!r} is not a port or a container:host pair")
    if int(container) != int(host):
        raise ValueError(
            f"container port {int(container)} differs from host port {int(host)} in {value!r}: Moorage "
            f'publishes each port on the same port inside the container (use "{host}:{host}")'
        )
    return int(host)


def port_list(value: Any) -> Any:
    """Ports as a list, one port, or Skyport's comma-separated string ("25565:25565,25566:25566")."""
    if isinstance(value, str):
        return [host_port(p) for p in value.split(",") if p.strip()]
    if isinstance(value, list):
        return [host_port(p) for p in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    return value


def skyport_ports(ports: list[int]) -> str:
    """Our ports in Skyport's own form, "container:host" pairs joined by commas."""
    return ",".join(f"{p}:{p}" for p in ports)


def processor_spec(value: Any) -> Any:
    """Skyport's `processor` is a text specification; ours also counts cores. A whole number (8, "8") is
    cores; other text ("AMD Ryzen 9 5950X") is kept as the description (printable, at most 200 characters)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("must be a number of cores or a processor description")
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            if not text or len(text) > 200 or not text.isprintable():
                raise ValueError("a processor description is 1 to 200 printable characters") from None
            return text
    if not 1 <= value <= 4096:
        raise ValueError(f"{value} cores is not between 1 and 4096")
    return value
