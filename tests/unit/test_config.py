"""Configuration layering: defaults < file < environment < flags, with errors that name the option."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfig
from common.config import ConfigError, load
from coordinator.config import CoordinatorConfig


def test_flags_beat_environment_beat_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("admin_key: from-file\nhttp: {listen: '127.0.0.1:1'}\nfleet: {heartbeat_interval_s: 2}\n")
    env_map = {"MOORAGE_ADMIN_KEY": "admin_key", "MOORAGE_HTTP": "http.listen"}
    loaded = load(
        CoordinatorConfig,
        cfg,
        env={"MOORAGE_ADMIN_KEY": "from-env", "MOORAGE_HTTP": "127.0.0.1:2"},
        env_map=env_map,
        flags={"http.listen": "127.0.0.1:3", "admin_key": None},
    )
    assert loaded.admin_key == "from-env"  # no flag given
    assert loaded.http.listen == "127.0.0.1:3"  # flag wins
    assert loaded.fleet.heartbeat_interval_s == 2  # file kept where nothing overrides
    assert loaded.fleet.grace_intervals == 3  # default


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("fleet: {heartbeat_interval_s: -1}", "fleet.heartbeat_interval_s"),
        ("http: {listen: 'nope'}", "http.listen"),
        ("bogus: 1", "bogus"),
        ("- a list", "mapping"),
        ("a: [", "not valid YAML"),
    ],
)
def test_bad_values_name_the_option(tmp_path: Path, text: str, needle: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load(CoordinatorConfig, cfg)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(AgentConfig, tmp_path / "absent.yaml")


def test_enroll_address_defaults_to_the_next_port() -> None:
    assert AgentConfig(coordinator="c.example:7443").enroll_target() == "c.example:7444"
    assert CoordinatorConfig().enroll_listen == "0.0.0.0:7444"
    assert (
        CoordinatorConfig.model_validate({"grpc": {"listen": "127.0.0.1:0"}}).enroll_listen == "127.0.0.1:0"
    )
