"""Pull credentials from where `docker login` keeps them: inline entries and a real credential helper
(a script on PATH, run as the docker CLI runs one)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from agent.runtime.registry_auth import INDEX_SERVER, auth_header, registry_of


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def _decoded(header: str | None) -> dict[str, Any]:
    assert header is not None
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(header))
    return decoded


@pytest.mark.parametrize(
    ("repository", "registry"),
    [
        ("busybox", "docker.io"),
        ("library/busybox", "docker.io"),
        ("team/app", "docker.io"),
        ("docker.io/team/app", "docker.io"),
        ("registry.example.com/team/app", "registry.example.com"),
        ("registry.example:5000/app", "registry.example:5000"),
        ("localhost/app", "localhost"),
    ],
)
def test_registry_of(repository: str, registry: str) -> None:
    assert registry_of(repository) == registry


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    return tmp_path / "config.json"


async def test_inline_entries_by_registry(docker_config: Path) -> None:
    _write(
        docker_config,
        json.dumps(
            {
                "auths": {
                    "https://index.docker.io/v1/": {
                        "auth": base64.b64encode(b"hub:secret:with:colons").decode()
                    },
                    "registry.example:5000": {"identitytoken": "tok"},
                }
            }
        ),
    )
    assert _decoded(await auth_header("team/app")) == {
        "username": "hub",
        "password": "secret:with:colons",
        "serveraddress": INDEX_SERVER,
    }
    assert _decoded(await auth_header("registry.example:5000/app")) == {
        "identitytoken": "tok",
        "serveraddress": "registry.example:5000",
    }
    assert await auth_header("elsewhere.example/app") is None


async def test_no_config_sends_nothing(docker_config: Path) -> None:
    assert await auth_header("busybox") is None
    _write(docker_config, "not json")
    assert await auth_header("busybox") is None


async def test_a_credential_helper(
    docker_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """credHelpers for one registry, credsStore for the rest; a helper that knows nothing sends nothing."""
    helper = tmp_path / "bin" / "docker-credential-fake"
    helper.parent.mkdir()
    helper.write_text(
        "#!/bin/sh\n"
        "read server\n"
        'case "$server" in\n'
        '  registry.example) echo \'{"Username":"ci","Secret":"pw"}\' ;;\n'
        '  https://index.docker.io/v1/) echo \'{"Username":"<token>","Secret":"t0k"}\' ;;\n'
        "  *) echo 'credentials not found in native keychain'; exit 1 ;;\n"
        "esac\n"
    )
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{helper.parent}{os.pathsep}{os.environ['PATH']}")
    _write(docker_config, json.dumps({"credHelpers": {"registry.example": "fake"}}))
    assert _decoded(await auth_header("registry.example/app")) == {
        "username": "ci",
        "password": "pw",
        "serveraddress": "registry.example",
    }
    assert await auth_header("busybox") is None
    _write(docker_config, json.dumps({"credsStore": "fake"}))
    assert _decoded(await auth_header("busybox")) == {"identitytoken": "t0k", "serveraddress": INDEX_SERVER}
    assert await auth_header("other.example/app") is None
    _write(docker_config, json.dumps({"credsStore": "absent"}))
    assert await auth_header("busybox") is None
