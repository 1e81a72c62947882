"""Domain records with sensible defaults, for unit tests."""

from __future__ import annotations

from typing import Any

from coordinator.model import Instance, InstanceState, Node


def make_node(node_id: str, **over: Any) -> Node:
    values: dict[str, Any] = dict(
        id=node_id,
        name=node_id,
        address="127.0.0.1",
        port=8080,
        region_id=None,
        tags=[],
        memory_mib=4096,
        disk_mib=10_000,
        cpu_count=2,
        overallocation_pct=0,
        maintenance=False,
        enrolled=True,
        created_at=0.0,
    )
    values.update(over)
    return Node(**values)


def make_instance(instance_id: str, **over: Any) -> Instance:
    values: dict[str, Any] = dict(
        id=instance_id,
        name="i",
        organization_id=1,
        owner_id="u",
        image="img",
        image_ref="img",
        memory_mib=64,
        cpu_percent=50,
        disk_mib=0,
        env={},
        node_id=None,
        region_id=None,
        state=InstanceState.PENDING,
        error=None,
        suspended=False,
        container_id=None,
        created_at=0.0,
        updated_at=0.0,
        state_changed_at=0.0,
        delivered_at=None,
        released_at=None,
    )
    values.update(over)
    return Instance(**values)
