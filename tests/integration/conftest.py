"""Fixtures the integration tests share."""

from __future__ import annotations

from collections.abc import Iterator

import docker
import pytest


@pytest.fixture(scope="module")
def engine() -> Iterator[docker.DockerClient]:
    """The Docker engine, to see what really runs (a test that needs it calls require_docker first)."""
    client = docker.from_env()
    yield client
    client.close()
