"""What a benchmark (or a unit test) builds without daemons: rows straight into a store (an organization
with its first user, enrolled nodes) and the coordinator's core over that store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.catalogs.images import Catalog
from coordinator.catalogs.sizes import SizeCatalog
from coordinator.config import CoordinatorConfig
from coordinator.domain.records import Node
from coordinator.fleet.live import Fleet
from coordinator.security.pki import CertificateAuthority
from coordinator.security.sealing import Sealer
from coordinator.service.core import Core
from coordinator.store import users as users_store
from coordinator.store.engine import Store


async def organization_with_user(
    conn: AsyncConnection, user_id: str, *, admin: bool, now: float = 0.0
) -> int:
    """A new organization (its id is returned) and its user ``user_id`` (no password: keys only)."""
    org = await users_store.create_organization(conn, user_id, now)
    await users_store.create_user(
        conn,
        user_id=user_id,
        username=user_id,
        email=f"{user_id}@example.com",
        password_hash=None,
        admin=admin,
        organization_id=org,
        now=now,
    )
    return org


def node_record(node_id: str, **over: Any) -> Node:
    """An enrolled node in no region, 4 GiB and 2 cores unless ``over`` says otherwise."""
    values: dict[str, Any] = dict(
        id=node_id,
        name=node_id,
        address="127.0.0.1",
        port=8080,
        region_id=None,
        tags=[],
        memory_mib=4096,
        disk_mib=10_000,
        cpu_count=2,
        overallocation_pct=0,
        maintenance=False,
        enrolled=True,
        created_at=0.0,
    )
    values.update(over)
    return Node(**values)


def core_over(
    store: Store, data_dir: Path, config: CoordinatorConfig | None = None, sizes: SizeCatalog | None = None
) -> Core:
    """The coordinator's core over ``store``: an empty image catalog, a fresh CA and sealing key in
    ``data_dir``, no agents connected."""
    config = config or CoordinatorConfig(data_dir=data_dir)
    return Core(
        config,
        store,
        Fleet(config.fleet),
        Catalog([]),
        CertificateAuthority.load_or_create(data_dir),
        Sealer.load_or_create(data_dir),
        sizes or SizeCatalog([]),
    )
