"""People and programs: who a credential belongs to, logins, API keys, users, failed-attempt limits and
the audit trail."""

from __future__ import annotations

import re
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError

from coordinator.domain.records import KeyRecord, Principal, UserRecord
from coordinator.security import credentials, tokens
from coordinator.security.credentials import JwtSigner
from coordinator.service import policy
from coordinator.service.core import Core
from coordinator.service.errors import BadRequest, Conflict, NotFound, ServiceError, Unauthorized
from coordinator.store import users as users_store

USERNAME = re.compile(r"^[A-Za-z0-9_.-]{3,32}$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class TooManyRequests(ServiceError):
    status = 429

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many failed attempts from this address; retry in {retry_after_s} s")
        self.headers = {"Retry-After": str(retry_after_s)}


#: (address, account) pairs with recent failures kept before the expired ones are swept.
MAX_TRACKED = 100_000


class FailureLimiter:
    """At most ``limit`` failures per key in a sliding ``window_s``; the next attempt of that key is refused
    (429 with Retry-After) until the oldest failure leaves the window. The keys are chosen by the caller so
    that nobody is refused for someone else's failures: (address, login name) for passwords, the address
    for wrong keys (a valid key or token is never refused)."""

    def __init__(self, limit: int = 10, window_s: float = 60.0, clock: Any = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self._failures: dict[tuple[str, str | None], deque[float]] = {}

    def _recent(self, key: tuple[str, str | None]) -> deque[float]:
        now = self.clock()
        failures = self._failures.get(key)
        if failures is None:
            return deque()
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        if not failures:
            del self._failures[key]
        return failures

    def check(self, client: str, account: str | None = None) -> None:
        failures = self._recent((client, account))
        if len(failures) >= self.limit:
            raise TooManyRequests(max(1, int(failures[0] + self.window_s - self.clock()) + 1))

    def fail(self, client: str, account: str | None = None) -> None:
        if len(self._failures) >= MAX_TRACKED:  # a flood from many addresses: forget what has expired
            for key in list(self._failures):
                self._recent(key)
            for key in list(self._failures)[: len(self._failures) - MAX_TRACKED // 2]:
                del self._failures[key]  # still too many: the oldest go (bounded memory comes first)
        failures = self._failures.setdefault((client, account), deque(maxlen=self.limit))
        failures.append(self.clock())


@dataclass(frozen=True, slots=True)
class NewKey:
    record: KeyRecord
    key: str


@dataclass(frozen=True, slots=True)
class NewUser:
    username: str
    email: str
    password: str
    user_id: str | None = None
    admin: bool = False
    organization_id: int | None = None


class AccessService:
    def __init__(self, core: Core, signer: JwtSigner, limiter: FailureLimiter | None = None) -> None:
        self.core = core
        self.signer = signer
        self.limiter = limiter or FailureLimiter()
        #: key id -> last use, flushed with the heartbeat batch (no write per request)
        self.key_uses: dict[str, float] = {}

    # ------------------------------------------------------------ credentials

    async def authenticate(self, credential: str | None, client: str) -> tuple[Principal, str | None]:
        """(principal, key id or None for a JWT). A valid key or token always gets through; wrong ones count
        against the client address, and past the limit they are refused with 429 instead of 401 (keys are
        not guessable; the limit spares the database a flood)."""
        if not credential:
            raise Unauthorized("API key is required")
        if credentials.looks_like_jwt(credential):
            user_id = self.signer.subject(credential)
            principal = None
            if user_id is not None:
                async with self.core.store.read() as conn:
                    principal = await users_store.get_principal(conn, user_id)
            if principal is None:
                self._refused(client)
                raise Unauthorized("Token invalid or expired")
            return principal, None
        async with self.core.store.read() as conn:
            found = await users_store.principal_for_key_digest(conn, tokens.digest(credential))
        if found is None:
            self._refused(client)
            raise Unauthorized("API Key Invalid")
        key_id, principal = found
        self.key_uses[key_id] = self.core.clock()
        return principal, key_id

    def _refused(self, client: str) -> None:
        self.limiter.check(client)
        self.limiter.fail(client)

    async def session_token(self, credential: str, client: str) -> tuple[str, float]:
        """A JWT for whoever ``credential`` (an API key or a token) names: what the status page keeps in its
        cookie, so the key itself never sits in the browser; revoking the key ends new sessions, and a
        session ends with the token's lifetime (auth.jwt_ttl_s)."""
        principal, _ = await self.authenticate(credential.strip(), client)
        return self.signer.issue(principal.user_id)

    async def login(self, login: str, password: str, client: str) -> tuple[str, float]:
        """A password is tried at most ``auth.failed_attempts`` times per window for one login name from one
        client address (behind a trusted proxy, the forwarded one): an attacker slows down only the names
        they try, from their own address."""
        async with self.core.store.read() as conn:
            found = await users_store.password_hash(conn, login)
        # By the name tried, known or not: a known one and an unknown one answer alike (no enumeration).
        account = f"login:{login.strip().lower()}"
        self.limiter.check(client, account)
        # Verified even when nobody matches (against a dummy hash): the answer takes as long either way.
        ok = credentials.verify_password(found[1] if found else None, password)
        if found is None or not ok:
            self.limiter.fail(client, account)
            raise Unauthorized("invalid username, email or password")
        return self.signer.issue(found[0])

    async def flush_key_uses(self) -> None:
        uses, self.key_uses = self.key_uses, {}
        if uses:
            async with self.core.store.write() as conn:
                await users_store.touch_api_keys(conn, uses)

    # ------------------------------------------------------------ API keys

    async def create_key(self, caller: Principal, name: str) -> NewKey:
        key = tokens.new_api_key()
        key_id = str(uuid.uuid4())
        async with self.core.store.write() as conn:
            await users_store.create_api_key(
                conn,
                key_id=key_id,
                user_id=caller.user_id,
                name=name,
                prefix=key[:8],
                digest=tokens.digest(key),
                now=self.core.clock(),
            )
            record = await users_store.get_api_key(conn, key_id)
        assert record is not None
        return NewKey(record, key)

    async def list_keys(self, caller: Principal, everyone: bool) -> list[KeyRecord]:
        if everyone:
            policy.require_admin(caller, "listing every user's keys")
        async with self.core.store.read() as conn:
            return await users_store.list_api_keys(conn, None if everyone else caller.user_id)

    async def revoke_key(self, caller: Principal, key_id: str) -> None:
        async with self.core.store.write() as conn:
            record = await users_store.get_api_key(conn, key_id)
            if record is None or (record.user_id != caller.user_id and not caller.admin):
                raise NotFound(f"key {key_id} does not exist", field="key_id")
            await users_store.revoke_api_key(conn, key_id, self.core.clock())

    # ------------------------------------------------------------ users

    async def create_user(self, caller: Principal, new: NewUser) -> UserRecord:
        policy.require_admin(caller, "creating users")
        if not USERNAME.fullmatch(new.username):
            raise BadRequest("username: 3-32 letters, digits, '.', '_' or '-'", field="username")
        if not EMAIL.fullmatch(new.email):
            raise BadRequest("email: not a valid email address", field="email")
        if len(new.password) < 8:
            raise BadRequest("password: at least 8 characters", field="password")
        password_hash = credentials.hash_password(new.password)  # outside the write transaction: ~50 ms
        user_id = new.user_id or str(uuid.uuid4())
        now = self.core.clock()
        try:
            async with self.core.store.write() as conn:
                clashes = (
                    ("username", await users_store.find_user(conn, username=new.username)),
                    ("email", await users_store.find_user(conn, email=new.email)),
                    ("userId", await users_store.find_user(conn, user_id=user_id)),
                )
                for field, taken in clashes:
                    if taken is not None:
                        raise Conflict(f"{field}: a user with this {field} already exists", field=field)
                org = new.organization_id
                if org is None:
                    # Every customer is its own tenant unless an admin groups them.
                    org = await users_store.create_organization(conn, new.username, now)
                elif not await users_store.organization_exists(conn, org):
                    raise BadRequest(f"organization: {org} does not exist", field="organization")
                await users_store.create_user(
                    conn,
                    user_id=user_id,
                    username=new.username,
                    email=new.email,
                    password_hash=password_hash,
                    admin=new.admin,
                    organization_id=org,
                    now=now,
                )
                created = await users_store.find_user(conn, user_id=user_id)
        except IntegrityError as exc:  # a concurrent create took the name between our check and insert
            raise Conflict("a user with this username or email already exists") from exc
        assert created is not None
        return created

    async def list_users(self, caller: Principal) -> list[UserRecord]:
        async with self.core.store.read() as conn:
            return await users_store.list_users(conn, None if caller.admin else caller.organization_id)

    async def find_user(
        self, caller: Principal, kind: str, value: str, *, field: str = "value"
    ) -> UserRecord:
        """By ``kind`` (user_id, username or email); a user the caller may not see is not found."""
        async with self.core.store.read() as conn:
            found = await users_store.find_user(conn, **{kind: value})
        if found is None or not policy.can_see(caller, found.organization_id):
            raise NotFound(f"{field}: user not found", field=field)
        return found

    # ------------------------------------------------------------ audit

    async def audit(self, entry: dict[str, Any]) -> None:
        async with self.core.store.write() as conn:
            await users_store.write_audit(conn, [entry])
