"""Timestamps as every API writes them: ISO 8601 in UTC with a Z."""

from __future__ import annotations

import datetime as dt


def iso(ts: float | None) -> str | None:
    return (
        dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z") if ts is not None else None
    )
