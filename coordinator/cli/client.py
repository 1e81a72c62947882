"""The CLI's HTTP client: the coordinator's REST API over the standard library, its errors as exceptions."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8080"
#: Where `make run` keeps the admin key; used when neither --key nor MOORAGE_API_KEY is given.
LOCAL_KEY_FILE = Path(".moorage/coordinator/admin.key")


class ApiError(Exception):
    """The coordinator answered with an error status."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


class Unreachable(Exception):
    """No answer at all: wrong URL, coordinator down, network trouble."""


def error_from_body(status: int, body: bytes, reason: str = "") -> ApiError:
    """The API's {"error", "field"} body, or whatever text came back (a proxy's page, say)."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        field = data.get("field")
        return ApiError(status, data["error"], field if isinstance(field, str) else None)
    text = body.decode(errors="replace").strip().splitlines()
    return ApiError(status, (text[0][:200] if text else "") or reason or "request failed")


def render_error(exc: ApiError) -> str:
    return f"moorage: {exc.status} {exc.message}"


@dataclass(frozen=True, slots=True)
class Client:
    url: str
    key: str | None
    timeout_s: float = 60.0  # a delete waits for the agent (fleet.command_wait_s) before answering

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        headers = {"Accept": "application/json"}
        if self.key:
            headers["x-api-key"] = self.key
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url.rstrip("/") + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                raise error_from_body(exc.code, exc.read(), str(exc.reason)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise Unreachable(f"cannot reach the coordinator at {self.url}: {reason}") from exc
        return json.loads(raw) if raw.strip() else None

    def follow(self, path: str, after: int | None = None, resume: bool = True) -> Iterator[dict[str, Any]]:
        """The events of an SSE stream at ``path``, as an EventSource reads them: on a dropped connection
        it connects again after a pause, resuming after the last event's id (nothing missed or twice);
        without ``resume`` (a stream with no ids, such as logs) it ends there."""
        last = after
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if self.key:
                headers["x-api-key"] = self.key
            if last is not None:
                headers["Last-Event-ID"] = str(last)
            request = urllib.request.Request(self.url.rstrip("/") + path, None, headers)
            try:
                with urllib.request.urlopen(request, timeout=60) as response:  # keepalives every 15 s
                    failures = 0
                    for event in _sse_events(response):
                        last = int(event.get("id", last or 0))
                        yield event
                if not resume:
                    return
            except urllib.error.HTTPError as exc:
                with exc:
                    raise error_from_body(exc.code, exc.read(), str(exc.reason)) from None
            except (urllib.error.URLError, OSError) as exc:
                failures += 1
                if failures > FOLLOW_RETRIES or not resume:
                    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                    raise Unreachable(f"cannot reach the coordinator at {self.url}: {reason}") from exc
            time.sleep(min(2.0 * failures, 10.0))


#: Connection attempts in a row a follower makes before it gives up (about a minute).
FOLLOW_RETRIES = 8


def _sse_events(response: Any) -> Iterator[dict[str, Any]]:
    """Each event's data (JSON) of a text/event-stream, ``id`` included."""
    data: list[str] = []
    for raw in response:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("data:"):
            data.append(line[5:].lstrip())
        elif line == "" and data:
            found = json.loads("\n".join(data))
            data = []
            if isinstance(found, dict):
                yield found


def resolve_key(given: str | None, environ: Mapping[str, str]) -> str | None:
    if given:
        return given
    if environ.get("MOORAGE_API_KEY"):
        return environ["MOORAGE_API_KEY"]
    try:
        return LOCAL_KEY_FILE.read_text().strip() or None
    except OSError:
        return None
