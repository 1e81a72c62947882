"""How Skyport's clients write sizes and ports (coordinator/api/dialects/panel_input.py): examples, and the
round trip of our ports through Skyport's "container:host" form."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.api.dialects.panel_input import (
    host_port,
    mebibytes,
    percent,
    port_list,
    processor_spec,
    skyport_ports,
)


@pytest.mark.parametrize(
    ("given", "mib"),
    [(512, 512), ("512", 512), ("512MB", 512), ("512 mb", 512), ("512M", 512), ("1G", 1024), ("2GB", 2048)],
)
def test_sizes_with_and_without_a_unit(given: object, mib: int) -> None:
    assert mebibytes(given) == mib


@pytest.mark.parametrize(
    ("given", "says"), [("512TB", "unknown unit"), ("1.5G", "whole number"), ("", "whole")]
)
def test_sizes_we_will_not_guess(given: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        mebibytes(given)
    with pytest.raises(ValueError, match="true or false"):
        mebibytes(True)
    with pytest.raises(ValueError, match="true or false"):
        percent(False)


def test_ports_in_every_form_skyport_clients_use() -> None:
    assert port_list("34005:34005") == [34005]
    assert port_list("25565:25565, 25566:25566") == [25565, 25566]
    assert port_list(["25565", "25566:25566", 25567]) == [25565, 25566, 25567]
    assert port_list(25565) == [25565] and port_list("") == []
    assert host_port("34005") == host_port("34005:34005") == host_port(34005) == 34005
    assert percent("50%") == percent("50") == 50


@pytest.mark.parametrize("given", ["34005:34006", "a:b", "1:2:3", ":34005", "x"])
def test_ports_we_do_not_bind_are_refused(given: str) -> None:
    with pytest.raises(ValueError):
        host_port(given)


@given(st.lists(st.integers(1, 65535), unique=True, max_size=20))
def test_our_ports_survive_skyports_form(ports: list[int]) -> None:
    assert port_list(skyport_ports(ports)) == ports


def test_a_processor_is_cores_or_a_description() -> None:
    assert processor_spec(8) == processor_spec("8") == processor_spec(" 8 ") == 8
    assert processor_spec("AMD Ryzen 9 5950X") == "AMD Ryzen 9 5950X"
    for bad in (0, -1, "0", "", "x" * 201, True, 1.5, "\x00"):
        with pytest.raises(ValueError):
            processor_spec(bad)
