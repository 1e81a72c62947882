"""Webhook delivery on SQLite and PostgreSQL, POSTing to a real receiver on loopback: what a hook gets (its
organization's events and the shared fleet's, in id order, signed), retries after failures, a hanging
receiver timed out and its event given up on, and delivery resuming from the cursor after a restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from coordinator.api.outbound import WebhookPoster
from coordinator.config import CoordinatorConfig
from coordinator.domain.records import Principal, Webhook
from coordinator.security.sealing import Sealer
from coordinator.service import events as events_service
from coordinator.service.core import Core
from coordinator.service.errors import BadRequest
from coordinator.service.events import EventService
from coordinator.service.webhooks import NewWebhook, WebhookService, check_url
from coordinator.store import events as events_store
from coordinator.store import webhooks as webhooks_store
from coordinator.store.engine import Store
from tests.receiver import Receiver
from tests.unit.factories import event_with_id

ADMIN = Principal("a", "admin", 1, True)
ONE = Principal("u1", "one", 1, False)


@dataclass
class Parts:
    store: Store
    config: CoordinatorConfig
    sealer: Sealer = field(default_factory=lambda: Sealer(os.urandom(32)))
    clock: Any = time.time


@dataclass
class Running:
    hooks: WebhookService
    store: Store

    async def hook(self, hook_id: str) -> Webhook:
        async with self.store.read() as conn:
            found = await webhooks_store.get_webhook(conn, hook_id)
        assert found is not None
        return found


@contextlib.asynccontextmanager
async def delivering(store: Store, parts: Parts | None = None, **options: Any) -> AsyncIterator[Running]:
    settings = {"allow_private_targets": True, "retry_base_s": 0.05, "retry_max_s": 0.2, **options}
    parts = parts or Parts(store, CoordinatorConfig.model_validate({"webhooks": settings}))
    core = cast(Core, parts)
    poster = WebhookPoster()
    hooks = WebhookService(core, EventService(core), poster)
    task = asyncio.create_task(hooks.run_delivery())
    try:
        yield Running(hooks, store)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        hooks.events.close()
        await poster.close()


async def write(store: Store, org: int | None, what: str, kind: str = "instance.state") -> None:
    async with store.write() as conn:
        await events_store.record(conn, kind, at=time.time(), data={"what": what}, organization_id=org)


async def until(check: Any, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.02)


async def poll_hook(run: Running, hook_id: str, check: Any, within: float = 10.0) -> Webhook:
    deadline = time.monotonic() + within
    while not check(hook := await run.hook(hook_id)):
        assert time.monotonic() < deadline, f"not in time: {hook}"
        await asyncio.sleep(0.02)
    return hook


async def test_a_hook_gets_its_events_in_order_signed_and_retried(store: Store) -> None:
    with Receiver(failing=2) as receiver:
        async with delivering(store) as run:
            hook, secret = await run.hooks.create(ONE, NewWebhook(receiver.url, "ours"))
            assert secret.startswith("whsec_") and not hook.fleet_wide
            await write(store, 1, "a")
            await write(store, 2, "theirs")
            await write(store, None, "shared node", "node.status")
            await write(store, 1, "d")
            await until(lambda: len(receiver.accepted()) == 3)
            await asyncio.sleep(0.3)  # and nothing more
            stored = await run.hook(hook.id)
    got = receiver.got
    assert [r.event["data"]["what"] for r in receiver.accepted()] == ["a", "shared node", "d"]
    # The two failures were attempts at the first event, retried until it went through.
    assert [(r.status, r.event["data"]["what"]) for r in got[:3]] == [(500, "a"), (500, "a"), (200, "a")]
    assert got[1].at - got[0].at >= 0.04 and got[2].at - got[1].at >= 0.08  # backing off
    assert all(r.signed_by(secret) for r in got) and not got[0].signed_by("whsec_another")
    ids = [r.event["id"] for r in receiver.accepted()]
    assert ids == sorted(ids) and [r.headers["x-moorage-delivery"] for r in receiver.accepted()] == [
        str(i) for i in ids
    ]
    assert receiver.accepted()[1].headers["x-moorage-event"] == "node.status"
    assert (stored.delivered, stored.failures, stored.dropped) == (3, 0, 0)
    assert stored.last_error == "answered 500" and stored.cursor >= ids[-1]


async def test_a_hook_asking_for_some_kinds_gets_only_those(store: Store) -> None:
    with Receiver() as receiver:
        async with delivering(store) as run:
            await run.hooks.create(ADMIN, NewWebhook(receiver.url, kinds=("node.status",)))
            await write(store, 2, "an instance")
            await write(store, 2, "a node", "node.status")
            await until(lambda: len(receiver.accepted()) == 1)
            await asyncio.sleep(0.3)
    assert [r.event["data"]["what"] for r in receiver.got] == ["a node"]


async def test_a_hanging_receiver_is_timed_out_and_its_event_given_up_on(store: Store) -> None:
    with Receiver(hang_s=1.5) as receiver:
        async with delivering(store, timeout_s=0.3, max_attempts=2) as run:
            hook, _ = await run.hooks.create(ADMIN, NewWebhook(receiver.url))
            await write(store, 1, "lost")
            await write(store, 1, "kept")
            failing = await poll_hook(run, hook.id, lambda h: h.failures == 1)
            began = time.monotonic()
            assert failing.last_error == "no answer within 0.3 s" and failing.next_attempt_at is not None
            dropped = await poll_hook(run, hook.id, lambda h: h.dropped == 1)
            assert time.monotonic() - began < 1.0  # the second attempt timed out at 0.3 s, not the 1.5 s hang
            assert dropped.last_error is not None and dropped.last_error.startswith("gave up on event")
            receiver.hang_s = 0.0
            await until(lambda: [r.event["data"]["what"] for r in receiver.accepted()] == ["kept"], 10)
            # Counted once the receiver's answer is back with the deliverer (a moment after it was sent).
            stored = await poll_hook(run, hook.id, lambda h: h.delivered == 1)
    assert stored.dropped == 1 and stored.delivered == 1


async def test_delivery_resumes_from_the_cursor_after_a_restart(store: Store) -> None:
    parts = Parts(store, CoordinatorConfig.model_validate({"webhooks": {"allow_private_targets": True}}))
    with Receiver() as receiver:
        async with delivering(store, parts) as run:
            hook, _ = await run.hooks.create(ADMIN, NewWebhook(receiver.url))
            await write(store, 1, "first")
            await poll_hook(run, hook.id, lambda h: h.delivered == 1)  # (stopped before: sent again)
        await write(store, 1, "while nobody delivered")
        async with delivering(store, parts):  # another coordinator leading, say (the same cluster key)
            await until(lambda: len(receiver.accepted()) == 2)
            await asyncio.sleep(0.3)
    assert [r.event["data"]["what"] for r in receiver.got] == ["first", "while nobody delivered"]


async def test_a_deleted_hook_gets_nothing_more(store: Store) -> None:
    with Receiver() as receiver:
        async with delivering(store) as run:
            hook, _ = await run.hooks.create(ONE, NewWebhook(receiver.url))
            await run.hooks.delete(ONE, hook.id)
            await write(store, 1, "after")
            await asyncio.sleep(0.5)
            assert await run.hooks.visible_to(ONE) == []
    assert receiver.got == []


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.net/hook",
        "example.net/hook",
        "http:///nohost",
        "http://example.net:99999/",
        "javascript:alert(1)",
    ],
)
def test_a_url_that_is_not_http_is_refused(url: str) -> None:
    with pytest.raises(BadRequest) as refused:
        check_url(url, private_ok=True)
    assert refused.value.field == "url"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/",
        "http://localhost/",
        "http://10.1.2.3/",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "https://192.168.0.10/",
        "http://100.100.100.200/latest/meta-data",  # shared address space: a cloud's metadata service
    ],
)
def test_an_organizations_hook_may_not_reach_inside(url: str) -> None:
    with pytest.raises(BadRequest, match="not allowed"):
        check_url(url, private_ok=False)
    check_url(url, private_ok=True)  # an admin's may


@pytest.mark.parametrize("host", ["2130706433", "127.1", "0x7f.1", "017700000001"])
def test_an_address_in_a_form_that_is_not_canonical_is_refused(host: str) -> None:
    with pytest.raises(BadRequest, match="canonical"):
        check_url(f"http://{host}/", private_ok=False)


def test_a_public_url_is_taken() -> None:
    check_url("https://face.de/hook", private_ok=False)  # hex letters make a name, not an address
    check_url("https://hooks.example.net/moorage?x=1", private_ok=False)
    check_url("http://93.184.216.34:8080/", private_ok=False)


async def test_a_hook_waits_for_an_id_passed_as_a_gap_and_delivers_in_order(store: Store) -> None:
    """On PostgreSQL a lower id can commit after a higher one: the hook is not moved past it while it may
    still come, and gets both in id order when it does."""
    with Receiver() as receiver:
        async with delivering(store) as run:
            await run.hooks.create(ADMIN, NewWebhook(receiver.url))
            await write(store, 1, "first")
            await until(lambda: len(receiver.accepted()) == 1)
            async with store.read() as conn:
                base = await events_store.newest_id(conn)  # base + 1: the id a slow transaction drew
            await event_with_id(store, base + 2, "higher id, committed first")
            await asyncio.sleep(events_service.GAP_WAIT_S + 1.0)  # the stream has passed the gap by now
            assert len(receiver.accepted()) == 1
            await event_with_id(store, base + 1, "lower id, committed late")
            await until(lambda: len(receiver.accepted()) == 3, 3)  # at once, not when the gap expires
    assert [r.event["data"]["what"] for r in receiver.accepted()] == [
        "first",
        "lower id, committed late",
        "higher id, committed first",
    ]


async def test_events_pruned_before_a_hook_got_them_are_counted_dropped(store: Store) -> None:
    parts = Parts(store, CoordinatorConfig.model_validate({"webhooks": {"allow_private_targets": True}}))
    hooks = WebhookService(cast(Core, parts), EventService(cast(Core, parts)))  # no poster: nothing delivers
    mine, _ = await hooks.create(ONE, NewWebhook("https://hooks.example.net/in"))
    nodes_only, _ = await hooks.create(
        ADMIN, NewWebhook("https://ops.example.net/in", kinds=("node.status",))
    )
    async with store.write() as conn:
        for org, at in ((1, 100.0), (2, 100.0), (1, 200.0), (1, time.time() + 3600)):
            await events_store.record(conn, "instance.state", at=at, data={}, organization_id=org)
        assert await events_store.prune(conn, 250.0) == 3
    async with store.read() as conn:
        left = await events_store.after(conn, 0, organization_id=None, admin=True)
        after = {h.id: h for h in await webhooks_store.list_webhooks(conn)}
    assert len(left) == 1
    # Its organization's two were lost (not the other's); the node-only hook wanted none of them.
    assert after[mine.id].dropped == 2 and "pruned" in (after[mine.id].last_error or "")
    assert after[nodes_only.id].dropped == 0
    assert after[mine.id].cursor == after[nodes_only.id].cursor == left[0].id - 1
