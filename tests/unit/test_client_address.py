"""Who the failure limits and the audit log count a request against: the peer, or behind a trusted proxy
the nearest forwarded address that is not a proxy; IPv6 clients by /64."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from coordinator.api.auth import TRUSTED_PROXIES, client_address


def request(remote: str, forwarded: str | None = None, trusted: tuple[str, ...] = ()) -> web.Request:
    app = web.Application()
    app[TRUSTED_PROXIES] = trusted
    headers = {"X-Forwarded-For": forwarded} if forwarded is not None else {}
    return make_mocked_request("GET", "/", headers=headers, app=app).clone(remote=remote)


@pytest.mark.parametrize(
    ("remote", "forwarded", "trusted", "client"),
    [
        ("203.0.113.5", None, (), "203.0.113.5"),
        # A forwarded address is believed only from a trusted proxy.
        ("203.0.113.5", "198.51.100.7", (), "203.0.113.5"),
        ("203.0.113.5", "198.51.100.7", ("127.0.0.1/32",), "203.0.113.5"),
        ("127.0.0.1", "198.51.100.7", ("127.0.0.1/32",), "198.51.100.7"),
        # The nearest address that is not a proxy: what the client put first may be a lie.
        ("10.0.0.2", "6.6.6.6, 198.51.100.7, 10.0.0.1", ("10.0.0.0/8",), "198.51.100.7"),
        ("10.0.0.2", "not-an-address, 10.0.0.1", ("10.0.0.0/8",), "10.0.0.2"),
        # One IPv6 host has a /64.
        ("2001:db8::1", None, (), "2001:db8::/64"),
        ("2001:db8::ffff:1", None, (), "2001:db8::/64"),
    ],
)
def test_client_address(remote: str, forwarded: str | None, trusted: tuple[str, ...], client: str) -> None:
    assert client_address(request(remote, forwarded, trusted)) == client
