"""Use cases name fields canonically (snake_case, the domain's words); each dialect words them its own way
(api/routing.py FIELD_NAMES and the dialects' tables). A camelCase field in coordinator/service/ is a
dialect's vocabulary leaking down, which this test finds before a reviewer has to."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[2] / "coordinator" / "service"
CANONICAL = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)*")


def fields_named_in(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.keyword) or node.arg != "field":
            continue
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            found.append((node.value.lineno, node.value.value))
    return found


def test_every_field_a_use_case_names_is_canonical() -> None:
    offenders = [
        f"{path.name}:{line}: {name!r}"
        for path in sorted(SERVICE.glob("*.py"))
        for line, name in fields_named_in(path)
        if not CANONICAL.fullmatch(name)
    ]
    assert not offenders, offenders


def test_the_scan_sees_the_use_cases_fields() -> None:
    named = {name for path in SERVICE.glob("*.py") for _, name in fields_named_in(path)}
    assert {"node_id", "region", "instance_id", "fallback_region_id"} <= named
