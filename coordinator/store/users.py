"""Users, organizations and API keys."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.store.tables import api_keys, organizations, users


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: resolved once per request from a key or token, then consulted by the policy layer."""

    user_id: str
    username: str
    organization_id: int
    admin: bool


async def create_organization(conn: AsyncConnection, name: str, now: float) -> int:
    result = await conn.execute(insert(organizations).values(name=name, created_at=now))
    pk = result.inserted_primary_key
    assert pk is not None
    return int(pk[0])


async def create_user(
    conn: AsyncConnection,
    *,
    user_id: str,
    username: str,
    email: str,
    password_hash: str | None,
    admin: bool,
    organization_id: int,
    now: float,
) -> None:
    await conn.execute(
        insert(users).values(
            id=user_id,
            username=username,
            email=email,
            password_hash=password_hash,
            admin=admin,
            organization_id=organization_id,
            created_at=now,
        )
    )


async def count_users(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.count()).select_from(users))).scalar_one())


async def get_principal(conn: AsyncConnection, user_id: str) -> Principal | None:
    row = (
        await conn.execute(
            select(users.c.id, users.c.username, users.c.organization_id, users.c.admin).where(
                users.c.id == user_id
            )
        )
    ).first()
    return Principal(row.id, row.username, row.organization_id, bool(row.admin)) if row else None


async def create_api_key(
    conn: AsyncConnection, *, key_id: str, user_id: str, name: str, prefix: str, digest: str, now: float
) -> None:
    await conn.execute(
        insert(api_keys).values(
            id=key_id, user_id=user_id, name=name, prefix=prefix, digest=digest, created_at=now
        )
    )


async def principal_for_key_digest(conn: AsyncConnection, digest: str) -> tuple[str, Principal] | None:
    """(key id, principal) for a live key with this digest. The digest is the lookup index; the caller has
    already hashed the presented key, so no secret is ever compared here byte by byte."""
    row = (
        await conn.execute(
            select(
                api_keys.c.id,
                users.c.id.label("uid"),
                users.c.username,
                users.c.organization_id,
                users.c.admin,
            )
            .join(users, users.c.id == api_keys.c.user_id)
            .where(api_keys.c.digest == digest, api_keys.c.revoked_at.is_(None))
        )
    ).first()
    if row is None:
        return None
    return row.id, Principal(row.uid, row.username, row.organization_id, bool(row.admin))


async def touch_api_keys(conn: AsyncConnection, last_used: dict[str, float]) -> None:
    for key_id, at in last_used.items():
        await conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=at))
