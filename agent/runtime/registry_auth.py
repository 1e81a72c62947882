"""Credentials for pulling from a private registry, found where ``docker login`` keeps them, as docker-py
found them for the agent before: ``$DOCKER_CONFIG/config.json`` (default ``~/.docker/config.json``), an
inline ``auths`` entry, or a credential helper (``credHelpers`` for that registry, ``credsStore`` for all).
The engine takes them as the X-Registry-Auth header of the pull. No credentials found: none sent (a public
image needs none; a private one fails with the registry's own words).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from pathlib import Path
from typing import Any

#: Docker Hub, by the name the engine and the credential stores use for it.
INDEX_SERVER = "https://index.docker.io/v1/"
_HUB_NAMES = {"docker.io", "index.docker.io", "registry-1.docker.io"}
_HELPER_TIMEOUT_S = 30.0


def registry_of(repository: str) -> str:
    """The registry a repository lives on, as the docker CLI reads the name; "docker.io" for Docker Hub."""
    first, slash, _ = repository.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return "docker.io" if first in _HUB_NAMES else first
    return "docker.io"


def _bare(server: str) -> str:
    """A config key or server address without its scheme and path: "https://reg:5000/v1/" -> "reg:5000"."""
    host = server.split("://", 1)[-1].split("/", 1)[0]
    return "docker.io" if host in _HUB_NAMES else host


def _config() -> dict[str, Any]:
    directory = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    try:
        loaded = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _from_entry(entry: dict[str, Any]) -> dict[str, str]:
    found: dict[str, str] = {}
    if entry.get("auth"):
        with contextlib.suppress(ValueError):
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            found.update(username=user, password=password)
    for key in ("username", "password", "identitytoken"):
        if entry.get(key) and key not in found:
            found[key] = str(entry[key])
    return found


async def _from_helper(helper: str, server: str) -> dict[str, str]:
    """``docker-credential-<helper> get``: the server on stdin, {"Username", "Secret"} on stdout."""
    try:
        proc = await asyncio.create_subprocess_exec(
            f"docker-credential-{helper}",
            "get",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:
        return {}
    try:
        async with asyncio.timeout(_HELPER_TIMEOUT_S):
            out, _ = await proc.communicate(server.encode())
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return {}
    try:
        answer = json.loads(out)
    except ValueError:
        return {}  # "credentials not found in native keychain" and the like
    if proc.returncode != 0 or not isinstance(answer, dict) or not answer.get("Secret"):
        return {}
    if answer.get("Username") == "<token>":
        return {"identitytoken": str(answer["Secret"])}
    return {"username": str(answer.get("Username", "")), "password": str(answer["Secret"])}


async def auth_header(repository: str) -> str | None:
    """X-Registry-Auth for pulling ``repository`` (no tag), or None when no credentials are configured."""
    config = _config()
    registry = registry_of(repository)
    server = INDEX_SERVER if registry == "docker.io" else registry
    helper = (config.get("credHelpers") or {}).get(registry) or config.get("credsStore")
    found: dict[str, str] = {}
    if helper:
        found = await _from_helper(str(helper), server)
    if not found:
        for key, entry in (config.get("auths") or {}).items():
            if _bare(key) == registry and isinstance(entry, dict):
                found = _from_entry(entry)
                break
    if not found:
        return None
    payload = {**found, "serveraddress": server}
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()
