"""Webhooks: the fleet's events POSTed as JSON to a URL, signed with the hook's secret (HMAC-SHA256 over
the body), at least once and in id order per hook.

The leader delivers for every coordinator: each hook's cursor in the database says how far it got, so a new
leader resumes where the last one stopped (an event whose POST was in flight may come twice; receivers
dedupe on X-Moorage-Delivery). A failed attempt waits retry_base_s, doubling up to retry_max_s; after
max_attempts the event is given up on, counted as dropped, and the next is tried. The POSTs themselves are
made by an injected :class:`Poster` (the HTTP client lives with the HTTP layer), each bounded by
timeout_s, one hook's delivery never waiting on another's."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from common.logging import get
from coordinator.domain.records import EVENT_KINDS, FleetEvent, Principal, Webhook
from coordinator.service import policy
from coordinator.service.core import Core
from coordinator.service.errors import BadRequest, NotFound
from coordinator.service.events import EventService, Subscription, document
from coordinator.store import events as events_store
from coordinator.store import webhooks as webhooks_store

log = get("coordinator.webhooks")

SIGNATURE_HEADER = "X-Moorage-Signature-256"
#: Events read per query while a hook catches up.
PAGE = 100
#: How often the deliverer looks at the hooks when no event wakes it (retry times, new hooks).
LOOK_S = 0.5


class DeliveryFailed(Exception):
    """A POST that got no answer (refused, unresolvable, timed out); the message says which."""


class Poster(Protocol):
    async def __call__(
        self, url: str, body: bytes, headers: dict[str, str], *, private_ok: bool, timeout_s: float
    ) -> int:
        """POST ``body``; the status of the answer, or DeliveryFailed. ``private_ok``: may reach loopback,
        private and link-local addresses."""
        ...


@dataclass(frozen=True)
class NewWebhook:
    url: str
    description: str = ""
    kinds: tuple[str, ...] | None = None


def public_address(address: str) -> bool:
    """Whether an IP address is one a tenant's hook may reach (not loopback, private, link-local...)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # is_global leaves out private, loopback, link-local, shared (100.64/10: cloud metadata, CGNAT) and
    # reserved space alike.
    return ip.is_global and not ip.is_multicast


#: A host of numbers (decimal or 0x) and dots: an address, perhaps in a form that is not canonical.
NUMERIC_HOST = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]*))*", re.IGNORECASE)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def check_url(url: str, private_ok: bool) -> None:
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises on a port out of range
    except ValueError as exc:
        raise BadRequest(f"url: not a URL ({exc})", field="url") from exc
    if parts.scheme not in ("http", "https") or not host:
        raise BadRequest("url: give an http:// or https:// URL with a host", field="url")
    if private_ok:
        return
    if NUMERIC_HOST.fullmatch(host) and not _is_ip(host):
        # 2130706433, 127.1, 0x7f.1: what some resolvers read as an address; never a name worth reaching.
        raise BadRequest("url: write an address in its canonical form", field="url")
    if host == "localhost" or host.endswith(".localhost"):
        raise BadRequest("url: loopback addresses are not allowed for an organization's hook", field="url")
    with contextlib.suppress(ValueError):
        if not public_address(host):
            raise BadRequest(
                "url: loopback, private and link-local addresses are not allowed for an organization's hook",
                field="url",
            )


class WebhookService:
    def __init__(self, core: Core, events: EventService, post: Poster | None = None) -> None:
        self.core = core
        self.events = events
        self.post = post

    def _private_ok(self, hook: Webhook | Principal) -> bool:
        fleet = hook.fleet_wide if isinstance(hook, Webhook) else hook.admin
        return fleet or self.core.config.webhooks.allow_private_targets

    async def create(self, caller: Principal, new: NewWebhook) -> tuple[Webhook, str]:
        """A hook for the caller's organization (an admin's: for the whole fleet) that gets events from now
        on; the secret is in this answer only."""
        check_url(new.url, self._private_ok(caller))
        unknown = sorted(set(new.kinds or ()) - set(EVENT_KINDS))
        if unknown:
            raise BadRequest(
                f"kinds: unknown {', '.join(unknown)} (known: {', '.join(EVENT_KINDS)})", field="kinds"
            )
        secret = "whsec_" + secrets.token_urlsafe(32)
        hook = Webhook(
            id=str(uuid.uuid4()),
            organization_id=caller.organization_id,
            fleet_wide=caller.admin,
            url=new.url,
            description=new.description,
            kinds=tuple(dict.fromkeys(new.kinds)) if new.kinds else None,
            created_at=self.core.clock(),
            cursor=0,
        )
        async with self.core.store.write() as conn:
            hook = dataclasses.replace(hook, cursor=await events_store.newest_id(conn))
            await webhooks_store.insert_webhook(conn, hook, self.core.sealer.seal(secret.encode(), hook.id))
        log.info("webhook created", id=hook.id, organization=hook.organization_id, fleet_wide=hook.fleet_wide)
        return hook, secret

    async def visible_to(self, caller: Principal) -> list[Webhook]:
        async with self.core.store.read() as conn:
            return await webhooks_store.list_webhooks(conn, None if caller.admin else caller.organization_id)

    async def get(self, caller: Principal, hook_id: str) -> Webhook:
        async with self.core.store.read() as conn:
            hook = await webhooks_store.get_webhook(conn, hook_id)
        if hook is None:
            raise NotFound(f"webhook {hook_id} does not exist", field="id")
        policy.check_visible(caller, hook.organization_id, f"webhook {hook_id}", field="id")
        return hook

    async def delete(self, caller: Principal, hook_id: str) -> None:
        await self.get(caller, hook_id)
        async with self.core.store.write() as conn:
            await webhooks_store.delete_webhook(conn, hook_id)
        log.info("webhook deleted", id=hook_id)

    # ------------------------------------------------------------ delivery

    async def run_delivery(self, leading: Callable[[], bool] = lambda: True) -> None:
        """Forever: while this coordinator leads and any hook exists, deliver what each has not got."""
        running: dict[str, asyncio.Task[None]] = {}
        finished = asyncio.Event()
        sub: Subscription | None = None
        feed = self.events.feed
        try:
            while True:
                hooks: list[Webhook] = []
                if leading() and self.post is not None:
                    try:
                        async with self.core.store.read() as conn:
                            hooks = await webhooks_store.list_webhooks(conn)
                    except Exception:
                        log.exception("reading the webhooks failed; trying again")
                if not hooks:
                    for task in running.values():
                        task.cancel()
                    running.clear()
                    if sub is not None:
                        feed.unsubscribe(sub)
                        sub = None
                    await asyncio.sleep(LOOK_S * 2)
                    continue
                if sub is None or sub.overflowed:  # the feed runs while anyone listens; its batches wake us
                    if sub is not None:
                        feed.unsubscribe(sub)
                    sub = await feed.subscribe()
                while not sub.queue.empty():
                    sub.queue.get_nowait()
                retry_in = self._dispatch(hooks, running, feed.settled, finished)
                # Until new events, a delivery ending (its hook may go on or retry soon) or a retry falls due.
                waiters = [asyncio.ensure_future(sub.queue.get()), asyncio.ensure_future(finished.wait())]
                await asyncio.wait(
                    waiters, timeout=min(LOOK_S, retry_in), return_when=asyncio.FIRST_COMPLETED
                )
                for waiter in waiters:
                    waiter.cancel()
                finished.clear()
        finally:
            for task in running.values():
                task.cancel()
            # Ended before this returns: none is left writing a cursor after the leader stopped.
            await asyncio.gather(*running.values(), return_exceptions=True)
            if sub is not None:
                feed.unsubscribe(sub)

    def _dispatch(
        self,
        hooks: list[Webhook],
        running: dict[str, asyncio.Task[None]],
        safe: int | None,
        finished: asyncio.Event,
    ) -> float:
        """Start delivery for each hook behind the feed that is not at it already or waiting to retry;
        the seconds until the first retry falls due."""
        now = self.core.clock()
        retry_in = LOOK_S
        for hook_id in [i for i, t in running.items() if t.done()]:
            del running[hook_id]
        for hook in hooks:
            if safe is None or hook.cursor >= safe or hook.id in running:
                continue
            if hook.next_attempt_at is not None and now < hook.next_attempt_at:
                retry_in = min(retry_in, hook.next_attempt_at - now)
                continue
            task = running[hook.id] = asyncio.create_task(
                self._deliver(hook, safe), name=f"webhook-{hook.id}"
            )
            task.add_done_callback(lambda _: finished.set())
        return retry_in

    async def _deliver(self, hook: Webhook, up_to: int) -> None:
        """The hook's events past its cursor up to ``up_to``, one POST each in id order; stops at a failure
        (its retry is the next dispatch's, once due)."""
        try:
            async with self.core.store.read() as conn:
                # Afresh: the listing that dispatched this may predate the last attempt's failure.
                fresh = await webhooks_store.get_webhook(conn, hook.id)
                sealed = await webhooks_store.sealed_secret(conn, hook.id)
            if fresh is None or sealed is None:
                return  # deleted meanwhile
            hook = fresh
            if hook.next_attempt_at is not None and self.core.clock() < hook.next_attempt_at:
                return  # its retry is not due yet
            secret = self.core.sealer.open(sealed, hook.id).decode()
            cursor, failures = hook.cursor, hook.failures
            while cursor < up_to:
                async with self.core.store.read() as conn:
                    page = await events_store.after(
                        conn,
                        cursor,
                        organization_id=hook.organization_id,
                        admin=hook.fleet_wide,
                        up_to=up_to,
                        limit=PAGE,
                    )
                for event in page:
                    if hook.kinds is not None and event.kind not in hook.kinds:
                        continue
                    if not await self._attempt(hook, secret, event, failures):
                        return
                    failures = 0
                cursor = page[-1].id if len(page) == PAGE else up_to
                async with self.core.store.write() as conn:
                    await webhooks_store.delivered(conn, hook.id, cursor, 0, None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("webhook delivery failed; trying again", id=hook.id)
            now = self.core.clock()  # not at once: whatever broke may break again
            with contextlib.suppress(Exception):
                async with self.core.store.write() as conn:
                    await webhooks_store.failed(
                        conn,
                        hook.id,
                        f"internal error: {exc}",
                        now,
                        now + self.core.config.webhooks.retry_max_s,
                    )

    async def _attempt(self, hook: Webhook, secret: str, event: FleetEvent, failures: int) -> bool:
        """One POST of ``event``; whether delivery may go on past it (delivered, or given up on)."""
        assert self.post is not None
        cfg = self.core.config.webhooks
        body = json.dumps(document(event), separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Moorage-Webhook/1",
            "X-Moorage-Event": event.kind,
            "X-Moorage-Delivery": str(event.id),
            "X-Moorage-Hook": hook.id,
            SIGNATURE_HEADER: sign(secret, body),
        }
        try:
            status = await self.post(
                hook.url, body, headers, private_ok=self._private_ok(hook), timeout_s=cfg.timeout_s
            )
            error = None if 200 <= status < 300 else f"answered {status}"
        except DeliveryFailed as exc:
            error = str(exc)
        now = self.core.clock()
        async with self.core.store.write() as conn:
            if error is None:
                await webhooks_store.delivered(conn, hook.id, event.id, 1, now)
                return True
            attempts = failures + 1
            if attempts >= cfg.max_attempts:
                error = f"gave up on event {event.id} after {attempts} attempts: {error}"
                await webhooks_store.failed(conn, hook.id, error, now, None)
                await webhooks_store.gave_up(conn, hook.id, event.id)
                log.warning("webhook event dropped", id=hook.id, event_id=event.id, error=error)
                return True
            wait = min(cfg.retry_base_s * 2 ** (attempts - 1), cfg.retry_max_s)
            await webhooks_store.failed(conn, hook.id, error, now, now + wait)
        log.info(
            "webhook attempt failed",
            id=hook.id,
            event_id=event.id,
            attempt=attempts,
            error=error,
            retry_in=wait,
        )
        return False
