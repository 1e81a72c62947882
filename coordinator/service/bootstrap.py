"""First start: the admin user, its organization and the admin API key."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from coordinator.security import tokens
from coordinator.service.core import Core
from coordinator.store import users as users_store
from coordinator.store.engine import exclusive

ADMIN_USER_ID = "admin"


def _write_key_file(path: Path, key: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")


async def ensure_admin(core: Core, admin_key: str | None) -> str | None:
    """Create the admin and its key on an empty database; returns the key when one was just installed
    (so the caller prints it once). A key given by flag or environment on a later start is installed too if
    it is new, so automation can always rely on the key it passes."""
    async with core.store.write() as conn:
        # Coordinators starting at once on one database: one creates the admin, the others find it.
        await exclusive(conn, "bootstrap")
        now = core.clock()
        if await users_store.count_users(conn) == 0:
            org = await users_store.create_organization(conn, "default", now)
            await users_store.create_user(
                conn,
                user_id=ADMIN_USER_ID,
                username="admin",
                email="admin@localhost",
                password_hash=None,
                admin=True,
                organization_id=org,
                now=now,
            )
            key = admin_key or tokens.new_api_key()
        elif admin_key and await users_store.principal_for_key_digest(conn, tokens.digest(admin_key)) is None:
            key = admin_key
        else:
            return None
        await users_store.create_api_key(
            conn,
            key_id=str(uuid.uuid4()),
            user_id=ADMIN_USER_ID,
            name="admin (bootstrap)",
            prefix=key[:8],
            digest=tokens.digest(key),
            now=now,
        )
        # Written before the commit: a crash in between leaves a file for a key that a restart re-creates.
        _write_key_file(core.config.data_dir / "admin.key", key)
    return key
