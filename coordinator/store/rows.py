"""Rows into domain records: one mapping for every table whose columns are named as the record's fields."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


_FIELDS: dict[type[Any], tuple[str, ...]] = {}


def _field_names(cls: type[Any]) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def record_from_row(cls: type[T], row: Any, **converted: Any) -> T:
    """``cls`` from a row's same-named columns; ``converted`` holds the fields whose column needs more than a
    copy (SQLite's 0/1 for a boolean, NULL for an empty list, another column name). A field with neither a
    column nor a conversion keeps its default, so a narrow SELECT reads into a wide record."""
    columns: Mapping[str, Any] = row._mapping
    values = {name: columns[name] for name in _field_names(cls) if name in columns}
    values.update(converted)
    return cls(**values)


def record_values(record: Any, **extra: Any) -> dict[str, Any]:
    """A record's fields as bind parameters for a statement whose columns are named as the fields."""
    values = {name: getattr(record, name) for name in _field_names(type(record))}
    values.update(extra)
    return values
