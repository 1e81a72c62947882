"""Errors a use case raises; every dialect renders them in its own shape with the status given here.

``field`` is a canonical name (the domain's: ``node_id``, ``region``, ``instance_id``, ...); a message that
starts with it ("node_id: node x does not exist") is worded by each dialect with its own name for the field
(routing.Router.field_names). A ``reason`` names what went wrong (``region.not_found``); a dialect whose
document words that case its own way maps the reason to its text (routing.Router.messages), formatted
with the error's ``facts``. So no use case speaks a dialect's vocabulary."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ServiceError(Exception):
    status = 500

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        reason: str | None = None,
        facts: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.field = field
        self.reason = reason
        self.facts: Mapping[str, Any] = facts or {}
        prefix = f"{field}: " if field is not None else None
        #: The message without its field prefix (when it had one).
        self.detail = message.removeprefix(prefix) if prefix and message.startswith(prefix) else message
        self.named = prefix is not None and message.startswith(prefix)
        self.headers: dict[str, str] = {}

    @property
    def message(self) -> str:
        return self.worded({})[1]

    def worded(
        self, names: Mapping[str, str], messages: Mapping[str, str] | None = None
    ) -> tuple[str | None, str]:
        """(field, message) in a dialect's words: ``names`` maps canonical field names to its own,
        ``messages`` reasons to its own text."""
        field = names.get(self.field, self.field) if self.field is not None else None
        text = (messages or {}).get(self.reason or "")
        if text is not None:
            return field, text.format(**self.facts)
        return field, f"{field}: {self.detail}" if self.named else self.detail


class BadRequest(ServiceError):
    status = 400


class Unauthorized(ServiceError):
    status = 401


class Forbidden(ServiceError):
    status = 403


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    status = 409


class Unavailable(ServiceError):
    status = 503
