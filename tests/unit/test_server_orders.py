"""Pure pieces of the servers and client dialects: order defaults and their errors, field renaming, how an
address is written, the client list's filter, usage times, and the agent's instance files."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.files import FileStore
from agent.runtime.base import ContainerSpec, FileSet
from bench.seed import core_over
from coordinator.api.dialects import client, regions, servers
from coordinator.api.dialects.client_models import STATES_OF, ServerListQuery, parse_time
from coordinator.api.routing import FIELD_NAMES
from coordinator.catalogs.sizes import Size, SizeCatalog
from coordinator.config import CoordinatorConfig, ServersOptions
from coordinator.domain.records import InstanceState
from coordinator.service.core import Core
from coordinator.service.errors import BadRequest, Conflict
from coordinator.service.servers import SizedOrder, Where, deploy_order
from coordinator.store.engine import Store


def core(tmp_path: Path, **servers: str) -> Core:
    config = CoordinatorConfig(data_dir=tmp_path, servers=ServersOptions(**servers))
    sizes = SizeCatalog([Size(name="small", memory=512, cpu=50, disk=100, capacity=2)])
    return core_over(Store.open(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"), tmp_path, config, sizes)


async def test_order_takes_defaults_and_names_what_is_missing(tmp_path: Path) -> None:
    c = core(tmp_path, image="busybox", region="eu", size="small")
    order = deploy_order(c, SizedOrder("a", None, None, None), None)
    assert (order.image, order.region, order.size, order.memory_mib, order.cpu_percent, order.disk_mib) == (
        "busybox", "eu", "small", 512, 50, 100
    )  # fmt: skip
    bare = core(tmp_path / "bare", size="")
    with pytest.raises(BadRequest, match=r"^image: is required") as missing:
        deploy_order(bare, SizedOrder("a", None, None, "small"), None)
    assert missing.value.field == "image"
    with pytest.raises(BadRequest, match=r"^size: is required"):
        deploy_order(bare, SizedOrder("a", "busybox", None, None), None)
    # No region asked for or configured: anywhere with room.
    roaming = deploy_order(bare, SizedOrder("a", "busybox", None, "small"), None)
    assert (roaming.region, roaming.anywhere) == (None, True)
    assert not order.anywhere
    with pytest.raises(BadRequest, match=r"unknown size 'huge'.*small"):
        deploy_order(c, SizedOrder("a", None, None, "huge"), None)
    await c.store.close()
    await bare.store.close()


def test_each_dialect_words_a_canonical_field_its_own_way() -> None:
    refused = Conflict("region: no placement: eu full", field="region")
    assert refused.message == "region: no placement: eu full" and refused.detail == "no placement: eu full"
    assert refused.worded(FIELD_NAMES) == ("regionId", "regionId: no placement: eu full")
    assert refused.worded(client.FIELDS) == ("location", "location: no placement: eu full")
    assert refused.worded(servers.FIELDS) == ("region", "region: no placement: eu full")
    # A message that does not start with its field keeps its words; a field no table knows, its name.
    plain = BadRequest("Fallback region not found", field="fallback_region_id")
    assert plain.worded(FIELD_NAMES) == ("fallbackRegionId", "Fallback region not found")
    assert BadRequest("image: nope", field="image").worded(client.FIELDS) == ("image", "image: nope")
    # A dialect whose document has its own text for a case words it so, with the error's facts.
    busy = BadRequest(
        "region_id: region r1 is the fallback of eu, us",
        field="region_id",
        reason="region.is_fallback",
        facts={"regions": "eu, us"},
    )
    assert (
        busy.worded(FIELD_NAMES, regions.MESSAGES)[1] == "Cannot delete region: it is the fallback of eu, us"
    )
    assert busy.worded(FIELD_NAMES)[1] == "regionId: region r1 is the fallback of eu, us"


def test_address_brackets_ipv6_and_omits_a_missing_port() -> None:
    assert Where("eu", "DE", "10.0.0.5", 30001).address == "10.0.0.5:30001"
    assert Where("eu", "DE", "2001:db8::1", 30001).address == "[2001:db8::1]:30001"
    assert Where("eu", "DE", "node.example.net", 0).address == "node.example.net"
    assert Where("", "", "", 0).address == ""


def test_filter_joins_encoded_and_top_level_parameters() -> None:
    q = ServerListQuery.model_validate({"filter": "status=delivered&tag[]=a", "tag[]": ["b"]})
    states, tags = q.filters()
    assert states == STATES_OF["delivered"] and InstanceState.UNHEALTHY in states
    assert sorted(tags) == ["a", "b"]
    assert ServerListQuery.model_validate({"tag[]": "solo"}).filters() == (None, ["solo"])
    for bad in ("colour=red", "status=asleep"):
        with pytest.raises(BadRequest) as err:
            ServerListQuery.model_validate({"filter": bad}).filters()
        assert err.value.field == "filter"


def test_usage_times_accept_the_documents_form_iso_and_unix() -> None:
    assert parse_time("2030-01-02 22:55:00") == 1893624900.0
    assert parse_time("2030-01-02T22:55:00Z") == 1893624900.0
    assert parse_time("2030-01-02T23:55:00+01:00") == 1893624900.0
    assert parse_time("1893624900") == 1893624900.0
    assert parse_time(None) is None and parse_time("") is None
    with pytest.raises(ValueError, match="is not a time"):
        parse_time("yesterday")


def spec(files: tuple[FileSet, ...], iid: str = "i-1") -> ContainerSpec:
    return ContainerSpec(iid, "n", "name", "img", {}, 64, 10, files=files)


def test_files_are_written_read_only_swapped_whole_and_removed(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "files")
    first = store.materialize(spec((FileSet("/etc/moorage/tls", {"ca.pem": b"A", "key.pem": b"K"}),)))
    (mount,) = first.mounts
    assert (mount.target, mount.read_only) == ("/etc/moorage/tls", True)
    source = Path(mount.source)
    assert (source / "ca.pem").read_bytes() == b"A" and (source / "key.pem").stat().st_mode & 0o777 == 0o444
    # Only root on the host gets to them, whatever mode the directory above had.
    assert (tmp_path / "files").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "files" / "i-1").stat().st_mode & 0o777 == 0o700
    # A re-create writes the current set; files of the old set do not linger.
    again = store.materialize(spec((FileSet("/etc/moorage/tls", {"ca.pem": b"B"}),)))
    assert again.mounts == first.mounts
    assert sorted(p.name for p in source.iterdir()) == ["ca.pem"] and (source / "ca.pem").read_bytes() == b"B"
    store.remove("i-1")
    assert not (tmp_path / "files" / "i-1").exists()
    assert store.materialize(spec(())).mounts == ()
    for bad in (FileSet("relative", {"a": b""}), FileSet("/x", {"../escape": b""}), FileSet("/x", {"": b""})):
        with pytest.raises(ValueError):
            store.materialize(spec((bad,)))
    with pytest.raises(ValueError):
        store.materialize(spec((FileSet("/x", {"a": b""}),), iid="../up"))
