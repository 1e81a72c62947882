"""The coordinator's own HTTP requests out: webhook POSTs (service/webhooks.py). A tenant's hook reaches only
public addresses: names are resolved here and loopback, private and link-local answers dropped, so a name
that points inside the coordinator's network is refused however it is spelled."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from coordinator.service.webhooks import NUMERIC_HOST, DeliveryFailed, public_address


class _PublicOnly(AbstractResolver):
    def __init__(self) -> None:
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        kept = [r for r in found if public_address(r["host"])]
        if not kept:
            raise OSError(f"{host} resolves only to loopback, private or link-local addresses")
        return kept

    async def close(self) -> None:
        await self._inner.close()


class WebhookPoster:
    """Two client sessions, made on first use in the running loop: one that may reach any address (an
    admin's hooks), one that reaches public addresses only."""

    def __init__(self) -> None:
        self._sessions: dict[bool, aiohttp.ClientSession] = {}

    def _session(self, private_ok: bool) -> aiohttp.ClientSession:
        session = self._sessions.get(private_ok)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                limit=100, limit_per_host=4, resolver=None if private_ok else _PublicOnly()
            )
            session = self._sessions[private_ok] = aiohttp.ClientSession(connector=connector)
        return session

    async def __call__(
        self, url: str, body: bytes, headers: dict[str, str], *, private_ok: bool, timeout_s: float
    ) -> int:
        host = urlsplit(url).hostname or ""
        if not private_ok:
            try:
                literal = ipaddress.ip_address(host)
            except ValueError:
                literal = None
            if literal is not None and not public_address(host):
                raise DeliveryFailed(f"{host} is a loopback, private or link-local address")
            if literal is None and NUMERIC_HOST.fullmatch(host):
                raise DeliveryFailed(f"{host} is not an address in its canonical form")
        try:
            async with self._session(private_ok).post(
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as answer:
                await answer.content.read(65536)  # what it says is not needed; bounded
                return answer.status
        except TimeoutError as exc:
            raise DeliveryFailed(f"no answer within {timeout_s:g} s") from exc
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise DeliveryFailed(f"cannot POST: {exc or type(exc).__name__}") from exc

    async def close(self) -> None:
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            await session.close()
        await asyncio.sleep(0)  # let the connectors' transports close before the loop does
