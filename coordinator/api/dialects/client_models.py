"""Request and response models of the client dialect (seed 003). The document names paths and parameters
but shows no bodies; these follow its names (camelCase, `uuid`, `deliveredAt`/`releasedAt`), with unix
seconds for times and one page envelope for every list."""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import parse_qsl

from pydantic import BaseModel, ConfigDict, Field, field_validator

from coordinator.api.fields import Int, Text
from coordinator.domain.records import Instance, InstanceState
from coordinator.service.clients import TagInfo, Usage
from coordinator.service.errors import BadRequest
from coordinator.service.servers import Where

S = InstanceState
#: The lifecycle table's client column.
STATUS = {
    S.PENDING: "created",
    S.PROVISIONING: "provisioning",
    S.CREATED: "provisioned",
    S.STARTING: "provisioned",
    S.RUNNING: "delivered",
    S.UNHEALTHY: "delivered",
    S.STOPPED: "delivered",
    S.SUSPENDED: "delivered",
    S.RELEASING: "releasing",
    S.RELEASED: "released",
    S.ERROR: "failed",
}
STATES_OF: dict[str, frozenset[InstanceState]] = {
    name: frozenset(s for s, n in STATUS.items() if n == name) for name in set(STATUS.values())
}
TAG_PATTERN = r"^[A-Za-z0-9_:-]{1,64}$"


def unix(at: float | None) -> int | None:
    return int(at) if at is not None else None


# ---------------------------------------------------------------- queries


class Paging(BaseModel):
    model_config = ConfigDict(extra="ignore")

    page: Int = Field(1, ge=1, le=1_000_000, description="Page number, from 1.")
    limit: Int = Field(15, ge=1, le=100, description="Items per page (at most 100).")


class ServerListQuery(Paging):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    filter: str = Field(
        "",
        description="URL-encoded filters, e.g. status=delivered&tag[]=tag1&tag[]=tag2: the status and every "
        "tag must match.",
    )
    status: str | None = Field(None, description="The same as filter's status (when sent unencoded).")
    tags: list[Text] = Field(default_factory=list, alias="tag[]", description="The same as filter's tag[].")

    def filters(self) -> tuple[frozenset[InstanceState] | None, list[str]]:
        """(states, tags) from ``filter`` (a query string of its own) and the top-level parameters (sent by a
        client that did not encode the filter)."""
        status, tags = self.status, list(self.tags)
        for key, value in parse_qsl(self.filter, keep_blank_values=True):
            if key == "status":
                status = value
            elif key in ("tag[]", "tag"):
                tags.append(value)
            else:
                raise BadRequest(f"filter: unknown filter {key!r} (filters: status, tag[])", field="filter")
        if status is not None and status not in STATES_OF:
            raise BadRequest(
                f"filter: status {status!r} is not one of {', '.join(sorted(STATES_OF))}", field="filter"
            )
        return (STATES_OF[status] if status is not None else None), tags

    @field_validator("tags", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


def parse_time(value: str | None) -> float | None:
    """ "2030-01-02 22:55:00" (UTC, as the document shows), ISO 8601, or unix seconds."""
    if value is None or value == "":
        return None
    if value.isascii() and value.isdigit():
        if len(value) > 11:  # past the year 5000
            raise ValueError(f"{value!r} is not a time (unix seconds up to 11 digits)")
        return float(value)
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a time like 2030-01-02 22:55:00") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


class UsageQuery(Paging):
    deliveredAt: str | None = Field(None, description="Window start, e.g. 2030-01-02 22:55:00 (UTC).")
    releasedAt: str | None = Field(
        None, description="Window end, e.g. 2030-01-15 22:55:00 (UTC); default now."
    )

    @field_validator("deliveredAt", "releasedAt")
    @classmethod
    def _is_time(cls, value: str | None) -> str | None:
        parse_time(value)
        return value


# ---------------------------------------------------------------- bodies


class TagBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tag: str = Field(pattern=TAG_PATTERN)


class ServerOrder(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text | None = Field(None, min_length=1, max_length=100, description="Default: server- and 8 hex.")
    size: str | None = Field(None, description="Size catalog name; default servers.size.")
    location: str | None = Field(
        None, description="Region id, identifier or country (ISO-3166 alpha-2); default servers.region."
    )
    image: str | None = Field(None, description="Catalog image or Docker reference; default servers.image.")
    tags: list[Text] = Field(default_factory=list, max_length=60)


# ---------------------------------------------------------------- responses


class ClientServer(BaseModel):
    uuid: str
    clientId: int
    name: str
    status: str
    statusMessage: str
    size: str | None
    image: str
    location: str
    country: str
    ipAddress: str
    port: int
    tags: list[str]
    memory: int
    cpu: int
    disk: int
    bytesIn: int
    bytesOut: int
    createdAt: int
    deliveredAt: int | None
    releasedAt: int | None

    @classmethod
    def of(cls, inst: Instance, where: Where) -> ClientServer:
        return cls(
            uuid=inst.id,
            clientId=inst.organization_id,
            name=inst.name,
            status=STATUS[inst.state],
            statusMessage=inst.error or "",
            size=inst.size,
            image=inst.image,
            location=where.region,
            country=where.country,
            ipAddress=where.host,
            port=where.port,
            tags=list(inst.tags),
            memory=inst.memory_mib,
            cpu=inst.cpu_percent,
            disk=inst.disk_mib,
            bytesIn=inst.rx_bytes,
            bytesOut=inst.tx_bytes,
            createdAt=int(inst.created_at),
            deliveredAt=unix(inst.delivered_at),
            releasedAt=unix(inst.released_at),
        )


class PageOut(BaseModel):
    page: int
    limit: int
    total: int


class ServerPage(PageOut):
    data: list[ClientServer]


class Tag(BaseModel):
    tag: str
    servers: int = Field(description="How many of the client's servers carry it.")
    createdAt: int

    @classmethod
    def of(cls, info: TagInfo) -> Tag:
        return cls(tag=info.tag, servers=info.servers, createdAt=int(info.created_at))


class TagDetail(Tag):
    serverUuids: list[str]


class TagPage(PageOut):
    data: list[Tag]


class UsageRow(BaseModel):
    uuid: str
    name: str
    size: str | None
    location: str
    status: str
    deliveredAt: int | None
    releasedAt: int | None
    billableSeconds: int = Field(description="Seconds between delivery and release inside the window.")
    bytesIn: int = Field(description="Bytes the server received since it was created.")
    bytesOut: int = Field(description="Bytes the server sent since it was created.")

    @classmethod
    def of(cls, row: Usage, where: Where) -> UsageRow:
        inst = row.instance
        return cls(
            uuid=inst.id,
            name=inst.name,
            size=inst.size,
            location=where.region,
            status=STATUS[inst.state],
            deliveredAt=unix(inst.delivered_at),
            releasedAt=unix(inst.released_at),
            billableSeconds=row.billable_s,
            bytesIn=inst.rx_bytes,
            bytesOut=inst.tx_bytes,
        )


class UsagePage(PageOut):
    deliveredAt: int | None = Field(description="The window's start (unix seconds).")
    releasedAt: int = Field(description="The window's end (unix seconds).")
    data: list[UsageRow]
