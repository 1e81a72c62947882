"""The example configs in config/ are the operators' reference: they must load, list every option with a
comment (so a new option cannot ship undocumented), and the image catalog's defaults must pass their own
rules (or every deploy that relies on them would be refused)."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from agent.config import AgentConfig
from common.config import load
from coordinator.catalogs.images import Catalog, builtin
from coordinator.catalogs.sizes import SizeCatalog, SizeCatalogError
from coordinator.config import CoordinatorConfig

CONFIG = Path(__file__).resolve().parents[2] / "config"
COORDINATOR_YAML = CONFIG / "coordinator.yaml"
AGENT_YAML = CONFIG / "agent.yaml"
IMAGES_YAML = CONFIG / "images.yaml"
SIZES_YAML = CONFIG / "sizes.yaml"


def option_names(model: type[Any], prefix: str = "") -> set[str]:
    """Dotted names of every option, descending into nested sections (pydantic models or dataclasses)."""
    names: set[str] = set()
    fields = (
        typing.get_type_hints(model)
        if dataclasses.is_dataclass(model)
        else {name: info.annotation for name, info in model.model_fields.items()}
    )
    for name, annotation in fields.items():
        dotted = f"{prefix}{name}"
        names.add(dotted)
        if isinstance(annotation, type) and (
            issubclass(annotation, BaseModel) or dataclasses.is_dataclass(annotation)
        ):
            names |= option_names(annotation, f"{dotted}.")
    return names


def yaml_keys(path: Path) -> dict[str, int]:
    """Dotted key -> 0-based line of every mapping key (line numbers need the node tree, not safe_load)."""
    root = yaml.compose(path.read_text())
    found: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                dotted = f"{prefix}{key.value}"
                found[dotted] = key.start_mark.line
                walk(value, f"{dotted}.")

    assert root is not None, f"{path} is empty"
    walk(root, "")
    return found


def has_comment(lines: list[str], line: int) -> bool:
    above = lines[line - 1].strip() if line > 0 else ""
    return above.startswith("#") or re.search(r"\s#\s", lines[line]) is not None


@pytest.mark.parametrize(
    ("path", "model"),
    [(COORDINATOR_YAML, CoordinatorConfig), (AGENT_YAML, AgentConfig)],
    ids=["coord", "agent"],
)
def test_every_option_is_in_the_file(path: Path, model: type[Any]) -> None:
    keys = set(yaml_keys(path))
    assert option_names(model) - keys == set(), f"options missing from {path.name}"
    assert keys - option_names(model) == set(), f"keys in {path.name} that are not options"


@pytest.mark.parametrize("path", [COORDINATOR_YAML, AGENT_YAML], ids=["coord", "agent"])
def test_every_key_has_a_comment(path: Path) -> None:
    lines = path.read_text().splitlines()
    bare = [key for key, line in yaml_keys(path).items() if not has_comment(lines, line)]
    assert bare == [], f"keys without a comment above or beside them in {path.name}"


def test_coordinator_yaml_holds_the_defaults() -> None:
    config = load(CoordinatorConfig, COORDINATOR_YAML, env={})
    assert config.model_dump() == CoordinatorConfig().model_dump()


def test_the_shipped_catalogs_are_the_built_in_defaults() -> None:
    """A coordinator started without --config has them (the files in config/ are the same ones)."""
    assert IMAGES_YAML.resolve() == builtin("images.yaml").resolve()
    assert SIZES_YAML.resolve() == builtin("sizes.yaml").resolve()
    assert "busybox-httpd" in Catalog.load(None).images
    assert SizeCatalog.load(None).get(CoordinatorConfig().servers.size) is not None


def test_agent_yaml_holds_the_defaults() -> None:
    assert load(AgentConfig, AGENT_YAML, env={}) == AgentConfig()


def test_catalog_defaults_satisfy_their_patterns() -> None:
    catalog = Catalog.load(IMAGES_YAML)
    assert "busybox-httpd" in catalog.images
    for image in catalog.images.values():
        assert Catalog.is_reference(image.image), image.name
        for var in image.variables:
            if var.pattern is None:
                continue
            re.compile(var.pattern)
            # An empty default is not applied (a required one must come with the deploy, e.g. EULA).
            if var.default:
                assert re.fullmatch(var.pattern, var.default), f"{image.name}: {var.name}={var.default!r}"


def test_busybox_entry_keeps_the_image_command() -> None:
    entry = Catalog.load(IMAGES_YAML).get("busybox-httpd")
    assert entry is not None
    assert entry.image == "moorage-test/busybox:latest"
    assert entry.startup == []
    assert Catalog.resolve_variables(entry, {}) == {"SERVER_MOTD": "hello"}


def test_size_catalog_loads_and_orders_by_resources() -> None:
    sizes = SizeCatalog.load(SIZES_YAML)
    listed = sizes.listed()
    assert [s.name for s in listed][:3] == ["nano", "vpn-8", "small"]
    assert [s.memory for s in listed] == sorted(s.memory for s in listed)
    small = sizes.get("small")
    assert small is not None and small.memory >= 64 and small.cpu > 0 and small.capacity >= 1


def test_size_catalog_refuses_duplicates_and_bad_fields(tmp_path: Path) -> None:
    twice = tmp_path / "twice.yaml"
    twice.write_text("sizes:\n  - {name: a, memory: 64, cpu: 10}\n  - {name: a, memory: 128, cpu: 10}\n")
    with pytest.raises(SizeCatalogError, match="twice"):
        SizeCatalog.load(twice)
    bad = tmp_path / "bad.yaml"
    bad.write_text("sizes:\n  - {name: a, memory: 1, cpu: 10}\n")
    with pytest.raises(SizeCatalogError, match="memory"):
        SizeCatalog.load(bad)
