"""First start: the secrets (the data directory's, or the cluster's in the database), the admin user, its
organization and the admin API key."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from common.logging import get
from coordinator.security import tokens
from coordinator.security.cluster import NAMES, ClusterKey, ClusterKeyError, first_secrets
from coordinator.security.credentials import JwtSigner
from coordinator.security.pki import CertificateAuthority
from coordinator.security.sealing import Sealer
from coordinator.service.core import Core
from coordinator.store import cluster as cluster_store
from coordinator.store import users as users_store
from coordinator.store.engine import Store, exclusive

log = get("coordinator.bootstrap")

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


@dataclass(frozen=True)
class Secrets:
    ca: CertificateAuthority
    sealer: Sealer
    jwt_secret: bytes
    #: "database" (the cluster's, sealed with the cluster key) or "data directory".
    kept_in: str

    def signer(self, ttl_s: int) -> JwtSigner:
        return JwtSigner(self.jwt_secret, ttl_s)


async def load_secrets(store: Store, key: ClusterKey | None, data_dir: Path, now: float) -> Secrets:
    """Without a cluster key the secrets are the data directory's (one coordinator, today's behaviour),
    unless the database holds a cluster's: then the key is required. With a key the database's are opened,
    or, on a database that has none, the first coordinator puts them there (its data directory's if it ran
    alone before, so its agents, sealed values and tokens stay valid; new ones otherwise)."""
    if key is None:
        async with store.read() as conn:
            if await cluster_store.read_sealed(conn):
                raise ClusterKeyError(
                    "this database holds a cluster's secrets: start every coordinator on it with the cluster "
                    "key (storage.cluster_key_file, --cluster-key-file or MOORAGE_CLUSTER_KEY)"
                )
        return Secrets(
            CertificateAuthority.load_or_create(data_dir),
            Sealer.load_or_create(data_dir),
            JwtSigner.load_or_create_secret(data_dir),
            "data directory",
        )
    async with store.write() as conn:
        # Coordinators starting at once on an empty database: one creates the secrets, the others open them.
        await exclusive(conn, "bootstrap")
        sealed = await cluster_store.read_sealed(conn)
        if sealed:
            values = {name: key.open(name, value) for name, value in sealed.items()}
            missing = [name for name in NAMES if name not in values]
            if missing:
                raise ClusterKeyError(f"the database's cluster secrets lack {', '.join(missing)}")
        else:
            values, found = first_secrets(data_dir)
            await cluster_store.insert_sealed(conn, key.seal_all(values), now)
            log.info(
                "cluster secrets created in the database",
                taken_from_data_directory=found,
                note="the data directory's copies are no longer read and may be removed" if found else "",
            )
    try:
        sealer = Sealer(values["sealing.key"])
    except ValueError as exc:
        raise ClusterKeyError("the cluster's sealing key is not a 32-byte key") from exc
    return Secrets(
        CertificateAuthority.from_pem(values["ca.key"], values["ca.pem"], "the cluster's CA key"),
        sealer,
        values["jwt.secret"],
        "database",
    )
