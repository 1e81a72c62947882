"""Layered configuration: defaults < YAML file < environment < command-line flags.

Each daemon declares one model of its options: the coordinator a pydantic model, the agent a dataclass
(pydantic and the models built on it were 11 MiB of an agent that lives on every host; its options are a
few numbers, strings and one nested section, checked here by ``build``). This module merges the layers
and reports a bad value with the dotted name of the option, so an operator knows which line to fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import yaml

M = TypeVar("M")

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


class ConfigError(Exception):
    pass


class InvalidOption(ValueError):
    """A dataclass option's own check failed (raised by its ``__post_init__``)."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


def option(default: Any, *, ge: float | None = None, gt: float | None = None) -> Any:
    """A dataclass field whose value ``build`` keeps within bounds (as pydantic's ``Field(ge=, gt=)``)."""
    bounds = {name: value for name, value in (("ge", ge), ("gt", gt)) if value is not None}
    return dataclasses.field(default=default, metadata=bounds)


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _nest(dotted: Mapping[str, Any]) -> dict[str, Any]:
    """{"storage.database": x} -> {"storage": {"database": x}}; None values are dropped (flag not given)."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        if value is None:
            continue
        parts = key.split(".")
        cursor = out
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = value
    return out


def load(
    model: type[M],
    path: str | Path | None,
    env: Mapping[str, str] | None = None,
    env_map: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> M:
    """Build ``model`` from the layers. ``env_map`` maps environment variable names to dotted options."""
    data: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        try:
            loaded = yaml.safe_load(file.read_text()) or {}
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {file} does not exist") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {file} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {file} must hold a mapping of options")
        data = loaded
    environ = os.environ if env is None else env
    from_env = {dotted: environ[name] for name, dotted in (env_map or {}).items() if environ.get(name)}
    data = _merge(data, _nest(from_env))
    data = _merge(data, _nest(flags or {}))
    if dataclasses.is_dataclass(model):
        return build(model, data)
    from pydantic import ValidationError  # the coordinator's models; the agent never loads pydantic

    try:
        return cast(M, cast(Any, model).model_validate(data))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc


def build(model: type[M], data: Any) -> M:
    """A dataclass of options from plain data (YAML, environment strings, flags), every problem named."""
    problems: list[str] = []
    built = _build(model, data, "", problems)
    if problems:
        raise ConfigError(f"invalid configuration: {'; '.join(problems)}")
    return cast(M, built)


def _build(model: type[Any], data: Any, prefix: str, problems: list[str]) -> Any:
    if not isinstance(data, Mapping):
        problems.append(f"{prefix.rstrip('.') or '(top level)'}: Input should be a mapping of options")
        return None
    hints = typing.get_type_hints(model)
    fields = {f.name: f for f in dataclasses.fields(model)}
    for extra in sorted(str(key) for key in data if key not in fields):
        problems.append(f"{prefix}{extra}: Extra inputs are not permitted")
    values: dict[str, Any] = {}
    for name, field in fields.items():
        if name not in data:
            continue
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            values[name] = _build(cast(type, kind), data[name], f"{prefix}{name}.", problems)
            continue
        try:
            values[name] = _checked(_coerce(kind, data[name]), field.metadata)
        except ValueError as exc:
            problems.append(f"{prefix}{name}: {exc}")
    if problems:
        return None
    try:
        return model(**values)
    except InvalidOption as exc:
        problems.append(f"{prefix}{exc.option}: {exc}")
        return None


def _coerce(kind: Any, raw: Any) -> Any:
    """As pydantic's lax mode reads the few types options have."""
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, int | str) and str(raw).strip().lower() in _TRUE | _FALSE:
            return str(raw).strip().lower() in _TRUE
        raise ValueError("Input should be a valid boolean")
    if kind is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        if isinstance(raw, str) and re.fullmatch(r"\s*[+-]?\d+\s*", raw):
            return int(raw)
        raise ValueError("Input should be a valid integer")
    if kind is float:
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw)
        with contextlib.suppress(ValueError):
            if isinstance(raw, str):
                return float(raw)
        raise ValueError("Input should be a valid number")
    if kind is str:
        if isinstance(raw, str):
            return raw
        raise ValueError("Input should be a valid string")
    if kind is Path:
        if isinstance(raw, str | os.PathLike):
            return Path(raw)
        raise ValueError("Input should be a valid path")
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        with contextlib.suppress(ValueError):
            return kind(raw)
        *others, last = (repr(member.value) for member in kind)
        raise ValueError(f"Input should be {', '.join(others)} or {last}")
    raise TypeError(f"no reading of {kind!r} options")  # a defect in the model, not in the file


def _checked(value: Any, bounds: Mapping[str, Any]) -> Any:
    if "ge" in bounds and not value >= bounds["ge"]:
        raise ValueError(f"Input should be greater than or equal to {bounds['ge']}")
    if "gt" in bounds and not value > bounds["gt"]:
        raise ValueError(f"Input should be greater than {bounds['gt']}")
    return value
