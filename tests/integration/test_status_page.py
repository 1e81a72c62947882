"""GET /status in headless Chromium (Debian's, driven by Playwright) against a real fleet: two regions, a
real agent on this host's Docker in each. Signing in with an API key sets an HttpOnly, SameSite=Strict
session cookie; the page shows every node and the regions' capacity; a node whose agent is killed turns
from ready to heartbeat abnormal on screen without a reload; it is readable at a phone's width. Screenshots
go to .artifacts/ (MOORAGE_ARTIFACTS to put them elsewhere)."""

from __future__ import annotations

import os
import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.daemons import REPO, wait_state
from tests.dockerenv import require_docker, require_tool
from tests.integration.sized_fleet import SizedFleet, sized_fleet

pytest.importorskip("playwright")
from playwright.sync_api import Browser, Page, expect, sync_playwright

#: Console messages of the pages about something their Content-Security-Policy refused.
BLOCKED: list[str] = []


def artifacts() -> Path:
    where = Path(os.environ.get("MOORAGE_ARTIFACTS") or REPO / ".artifacts")
    where.mkdir(parents=True, exist_ok=True)
    return where


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = require_tool("chromium")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SizedFleet]:
    require_docker()
    with sized_fleet(tmp_path_factory.mktemp("status"), docker=("eu", "us")) as f:
        yield f


def sign_in(browser: Browser, fleet: SizedFleet, key: str, **context: object) -> Page:
    page = browser.new_context(**context).new_page()  # type: ignore[arg-type]
    # Whatever the page's own policy blocks (an inline style, a script) is a part of it that does not work.
    page.on("console", lambda m: BLOCKED.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(fleet.api.url + "/status")
    page.fill("#key", key)
    page.click("button[type=submit]")
    page.wait_for_selector("#nodes")
    return page


def test_signing_in_sets_a_strict_httponly_session_and_a_bad_key_is_refused(
    browser: Browser, fleet: SizedFleet
) -> None:
    page = browser.new_context().new_page()
    page.goto(fleet.api.url + "/status")
    page.fill("#key", "mrg_not-a-key")
    page.click("button[type=submit]")
    expect(page.locator("[role=alert]")).to_contain_text("API Key Invalid")
    page = sign_in(browser, fleet, fleet.coordinator.admin_key)
    (cookie,) = page.context.cookies()
    assert cookie["name"] == "moorage_session" and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert fleet.coordinator.admin_key not in cookie["value"]  # a session token, not the key
    assert page.evaluate("document.cookie") == ""  # out of the page's scripts' reach
    # The API's own credential works on the page; the cookie works on no route that changes anything.
    request = urllib.request.Request(
        fleet.api.url + "/status", headers={"x-api-key": fleet.coordinator.admin_key}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200 and 'id="nodes"' in answer.read().decode()
    made = page.request.post(fleet.api.url + "/api/keys", data={"name": "by-cookie"})
    assert made.status == 401
    signed_out = page.context.new_page()
    signed_out.goto(fleet.api.url + "/status")
    signed_out.click("text=Sign out")
    expect(signed_out.locator("#key")).to_be_visible()
    assert signed_out.context.cookies() == []


def test_the_page_shows_the_fleet_and_a_killed_agent_turns_abnormal_without_a_reload(
    browser: Browser, fleet: SizedFleet
) -> None:
    api = fleet.api
    made = api.post(
        "/api/instances/deploy",
        {"image": "busybox-httpd", "memory": 16, "cpu": 1, "name": "shown", "regionId": fleet.regions["eu"]},
    )
    assert made.status == 201, made.body
    wait_state(api, made.body["id"], "running", timeout=20)
    page = sign_in(browser, fleet, fleet.coordinator.admin_key, viewport={"width": 1200, "height": 900})
    for node in fleet.nodes.values():
        row = page.locator(f'tr[data-node-id="{node["id"]}"]')
        expect(row).to_have_attribute("data-status", "ready")
        expect(row.locator(".status")).to_have_text("ready")
    eu = page.locator(f'tr[data-region-id="{fleet.regions["eu"]}"]')
    expect(eu).to_contain_text("1 / 2")  # servers placed against its serverLimit, drawn as a bar
    bar = eu.locator("meter")
    assert (bar.get_attribute("value"), bar.get_attribute("max")) == ("1", "2")
    expect(page.locator("#live")).to_have_text("live")
    expect(page.locator("#events li").first).to_contain_text("instance.state")
    page.evaluate("window.notReloaded = true")
    us_agent = fleet.agents[1]
    assert us_agent.proc is not None
    us_agent.proc.send_signal(signal.SIGKILL)
    us_agent.proc.wait()
    us = page.locator(f'tr[data-node-id="{fleet.nodes["us"]["id"]}"]')
    expect(us).to_have_attribute("data-status", "heartbeat_abnormal", timeout=10_000)
    expect(us.locator(".status")).to_have_text("heartbeat abnormal")
    assert page.evaluate("window.notReloaded") is True  # turned on screen, not by a reload
    expect(page.locator("#events li").first).to_contain_text("node.status")
    page.screenshot(path=str(artifacts() / "status-page.png"), full_page=True)
    # A phone: nothing wider than the screen but the tables, which scroll inside themselves.
    phone = sign_in(browser, fleet, fleet.coordinator.admin_key, viewport={"width": 390, "height": 844})
    assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    phone.screenshot(path=str(artifacts() / "status-page-phone.png"), full_page=True)
    assert api.delete("/api/instance/delete", {"id": made.body["id"]}).status == 201
    assert BLOCKED == []


def test_another_organization_sees_only_its_own(browser: Browser, fleet: SizedFleet) -> None:
    eve, _ = fleet.user("eve-status")
    key = eve.post("/api/keys", {"name": "page"}).body["key"]
    page = sign_in(browser, fleet, key)
    text = page.content()
    admins = fleet.api.get("/api/events?last=true&limit=50").body
    shown_elsewhere = {e["instanceId"] for e in admins if e["instanceId"]}
    assert shown_elsewhere and not any(iid in text for iid in shown_elsewhere)
    try:
        urllib.request.urlopen(fleet.api.url + "/status/fleet", timeout=10)
        raise AssertionError("the fleet fragment answered without credentials")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
