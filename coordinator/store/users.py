"""Users, organizations and API keys."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from coordinator.domain.records import KeyRecord, Principal, UserRecord
from coordinator.store.rows import record_from_row
from coordinator.store.tables import api_keys, audit_log, organizations, users


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


def _user(row: Any) -> UserRecord:
    return record_from_row(UserRecord, row, admin=bool(row.admin))


_USER_COLUMNS = (
    users.c.id,
    users.c.username,
    users.c.email,
    users.c.admin,
    users.c.organization_id,
    users.c.created_at,
)


async def list_users(conn: AsyncConnection, organization_id: int | None = None) -> list[UserRecord]:
    query = select(*_USER_COLUMNS).order_by(users.c.created_at, users.c.id)
    if organization_id is not None:
        query = query.where(users.c.organization_id == organization_id)
    return [_user(r) for r in await conn.execute(query)]


async def find_user(
    conn: AsyncConnection,
    *,
    user_id: str | None = None,
    username: str | None = None,
    email: str | None = None,
) -> UserRecord | None:
    query = select(*_USER_COLUMNS)
    if user_id is not None:
        query = query.where(users.c.id == user_id)
    if username is not None:
        query = query.where(users.c.username == username)
    if email is not None:
        query = query.where(func.lower(users.c.email) == email.lower())
    row = (await conn.execute(query)).first()
    return _user(row) if row else None


async def password_hash(conn: AsyncConnection, login: str) -> tuple[str, str | None] | None:
    """(user id, password hash) for a username or email."""
    row = (
        await conn.execute(
            select(users.c.id, users.c.password_hash).where(
                (users.c.username == login) | (func.lower(users.c.email) == login.lower())
            )
        )
    ).first()
    return (row.id, row.password_hash) if row else None


async def organization_exists(conn: AsyncConnection, organization_id: int) -> bool:
    found = await conn.execute(select(organizations.c.id).where(organizations.c.id == organization_id))
    return found.first() is not None


_KEY_COLUMNS = (
    api_keys.c.id,
    api_keys.c.user_id,
    api_keys.c.name,
    api_keys.c.prefix,
    api_keys.c.created_at,
    api_keys.c.last_used_at,
    api_keys.c.revoked_at,
)


async def list_api_keys(conn: AsyncConnection, user_id: str | None) -> list[KeyRecord]:
    """Keys without their digests (nothing secret leaves this function); all users' when user_id is None."""
    query = select(*_KEY_COLUMNS).order_by(api_keys.c.created_at, api_keys.c.id)
    if user_id is not None:
        query = query.where(api_keys.c.user_id == user_id)
    return [KeyRecord(*r) for r in await conn.execute(query)]


async def get_api_key(conn: AsyncConnection, key_id: str) -> KeyRecord | None:
    row = (await conn.execute(select(*_KEY_COLUMNS).where(api_keys.c.id == key_id))).first()
    return KeyRecord(*row) if row else None


async def revoke_api_key(conn: AsyncConnection, key_id: str, now: float) -> None:
    await conn.execute(
        update(api_keys)
        .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )


async def write_audit(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(insert(audit_log), rows)


async def organization_names(conn: AsyncConnection, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    rows = await conn.execute(
        select(organizations.c.id, organizations.c.name).where(organizations.c.id.in_(ids))
    )
    return {r.id: r.name for r in rows}
