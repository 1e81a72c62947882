"""Layered configuration: defaults < YAML file < environment < command-line flags.

Each daemon declares one pydantic model; this module only merges the layers and reports a bad value with
the dotted name of the option, so an operator knows which line of the file to fix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(Exception):
    pass


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
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc
