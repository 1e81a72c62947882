"""Shared helpers for tests that need a real Docker engine.

Outside CI a missing engine is a skip with the reason; CI sets MOORAGE_REQUIRE_DOCKER=1 so that an engine that
failed to come up is a failure instead of a silently green run.
"""

from __future__ import annotations

import functools
import gc
import os
import shutil
import socket
import urllib.request
import warnings
from typing import Any

import pytest

from bench.daemons import TEST_IMAGE


@functools.cache
def docker_available() -> tuple[bool, str]:
    """Whether an engine answers a ping (asked once per test session); the reason when it does not."""
    with warnings.catch_warnings():
        # docker-py leaves the socket of a failed connect open; collect it here, quietly, rather than let
        # its ResourceWarning fire in whichever test happens to run the garbage collector next.
        warnings.simplefilter("ignore", ResourceWarning)
        result = _ping_engine()
        gc.collect()
    return result


def _ping_engine() -> tuple[bool, str]:
    try:
        import docker

        client = docker.from_env(timeout=5)
    except Exception as exc:
        return False, f"no Docker engine reachable: {exc}"
    try:
        client.ping()
        client.images.get(TEST_IMAGE)
    except docker.errors.ImageNotFound:
        return False, f"test image {TEST_IMAGE} missing: run `bash tests/env/build-test-image.sh`"
    except Exception as exc:
        return False, f"no Docker engine reachable: {exc}"
    finally:
        client.close()
    return True, ""


def require_docker() -> None:
    """Skip the calling test without an engine, or fail it when MOORAGE_REQUIRE_DOCKER=1."""
    ok, reason = docker_available()
    if ok:
        return
    if os.environ.get("MOORAGE_REQUIRE_DOCKER") == "1":
        pytest.fail(f"MOORAGE_REQUIRE_DOCKER=1 but {reason}")
    pytest.skip(reason)


def require_tool(name: str) -> str:
    """The path of a program `make test-env` installs (chromium, promtool); without it the calling test
    skips, or fails when MOORAGE_REQUIRE_DOCKER=1 (CI has run make test-env)."""
    found = shutil.which(name)
    if found is not None:
        return found
    why = f"{name} is not installed (make test-env)"
    if os.environ.get("MOORAGE_REQUIRE_DOCKER") == "1":
        pytest.fail(why)
    pytest.skip(why)


def free_port() -> int:
    """A port that is free on 127.0.0.1 for both TCP and UDP (allocations publish both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no port free for both TCP and UDP on 127.0.0.1")


def serves(port: int) -> bool:
    """Whether the test image's page answers on the port (its httpd serves "moorage-test-ok")."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
            return b"moorage-test-ok" in resp.read()
    except OSError:
        return False


def inspect_labelled(client: Any, label: str) -> list[dict[str, Any]]:
    """The engine's inspection of every container with the label, skipping any removed between the listing
    and its inspection (docker-py's ``containers.list`` raises NotFound for those: a test watching an agent
    remove containers would fail on the race, not on the agent)."""
    import docker

    found = []
    for entry in client.api.containers(all=True, filters={"label": label}):
        try:
            found.append(client.api.inspect_container(entry["Id"]))
        except docker.errors.NotFound:
            continue
    return found
