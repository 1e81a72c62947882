"""Every request model of every route (walked from the routers, so new routes are covered): integers are
bounded (nothing reaches the database past 64 bits) and never taken from true/false, and name-like text
refuses control characters."""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator

import pytest
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from coordinator.api.app import all_routes

MODELS = sorted(
    {m for r in all_routes() for m in (r.body, r.query) if m is not None}, key=lambda m: m.__name__
)


def takes(annotation: object, kind: type) -> bool:
    """Whether the field takes a ``kind`` (alone, in a union with None or another type, or annotated)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return takes(typing.get_args(annotation)[0], kind)
    if origin in (typing.Union, types.UnionType):
        return any(takes(a, kind) for a in typing.get_args(annotation))
    return annotation is kind


def int_fields() -> Iterator[tuple[type[BaseModel], str, FieldInfo]]:
    for model in MODELS:
        for name, info in model.model_fields.items():
            if takes(info.annotation, int):
                yield model, name, info


def minimal(model: type[BaseModel], name: str, value: object) -> dict[str, object]:
    """A body that gets past the other required fields' presence checks (their values may still fail:
    only errors on ``name`` are looked at)."""
    return {name: value}


def errors_on(model: type[BaseModel], name: str, value: object) -> list[str]:
    try:
        model.model_validate(minimal(model, name, value))
    except ValidationError as exc:
        return [str(e["msg"]) for e in exc.errors() if e["loc"] and e["loc"][0] == name]
    return []


INT_FIELDS = [pytest.param(m, n, id=f"{m.__name__}.{n}") for m, n, _ in int_fields()]


@pytest.mark.parametrize(("model", "name"), INT_FIELDS)
def test_integers_are_never_true_or_false(model: type[BaseModel], name: str) -> None:
    assert errors_on(model, name, True), f"{model.__name__}.{name} takes true as 1"


@pytest.mark.parametrize(("model", "name"), INT_FIELDS)
def test_integers_are_bounded_below_64_bits(model: type[BaseModel], name: str) -> None:
    assert errors_on(model, name, 2**63), f"{model.__name__}.{name} takes 2**63"
    assert errors_on(model, name, -(2**63) - 1), f"{model.__name__}.{name} takes -2**63-1"


#: Fields that name something (shown to people, written to logs): no control characters in them.
NAME_LIKE = {"name", "username", "email", "address", "alias", "bindAddress", "tag"}
TEXT_FIELDS = [
    pytest.param(m, n, id=f"{m.__name__}.{n}")
    for m in MODELS
    for n, info in m.model_fields.items()
    if n in NAME_LIKE and takes(info.annotation, str)
]


@pytest.mark.parametrize(("model", "name"), TEXT_FIELDS)
@pytest.mark.parametrize("bad", ["a\x00b", "a\nb", "\x1b[31mred", "evil\u202egnp.exe", "a\u200bb"])
def test_names_refuse_control_characters(model: type[BaseModel], name: str, bad: str) -> None:
    assert errors_on(model, name, bad), f"{model.__name__}.{name} takes {bad!r}"


@pytest.mark.parametrize(
    ("model", "name"), [p for p in TEXT_FIELDS if p.values[1] in ("address", "bindAddress")]
)
@pytest.mark.parametrize(
    "bad", ["../../etc/passwd", "1.2.3.4; rm -rf /", "a b", "-lead.example.com", "x" * 300]
)
def test_addresses_are_host_names_or_ip_literals(model: type[BaseModel], name: str, bad: str) -> None:
    assert errors_on(model, name, bad), f"{model.__name__}.{name} takes {bad!r}"


def test_bind_addresses_are_ip_literals_only() -> None:
    from coordinator.api.canonical.nodes import AllocationCreate

    assert errors_on(AllocationCreate, "bindAddress", "node-1.example.net")
    for good in ("0.0.0.0", "127.0.0.1", "::", "2001:db8::1"):
        assert not errors_on(AllocationCreate, "bindAddress", good)


BODIES = sorted({r.body for r in all_routes() if r.body is not None}, key=lambda m: m.__name__)
BOOL_FIELDS = [
    pytest.param(m, n, id=f"{m.__name__}.{n}")
    for m in BODIES
    for n, info in m.model_fields.items()
    if takes(info.annotation, bool)
]


@pytest.mark.parametrize(("model", "name"), BOOL_FIELDS)
@pytest.mark.parametrize("bad", [0, 1, "true", "yes"])
def test_body_booleans_are_true_or_false(model: type[BaseModel], name: str, bad: object) -> None:
    assert errors_on(model, name, bad), f"{model.__name__}.{name} takes {bad!r} as a boolean"


TAG_FIELDS = [pytest.param(m, "tags", id=f"{m.__name__}.tags") for m in MODELS if "tags" in m.model_fields]


@pytest.mark.parametrize(("model", "name"), TAG_FIELDS)
def test_tags_refuse_control_characters(model: type[BaseModel], name: str) -> None:
    assert errors_on(model, name, ["fine", "a\x00b"]), f"{model.__name__}.tags takes a NUL"
    assert errors_on(model, name, ["evil\u202e"]), f"{model.__name__}.tags takes a bidi mark"
