"""Configuration layering: defaults < file < environment < flags, with errors that name the option."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.runtime.base import PullPolicy
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


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("restart: {max_delay_s: 0}", "restart.max_delay_s: Input should be greater than 0"),
        ("restart: {bogus: 1}", "restart.bogus: Extra inputs are not permitted"),
        ("restart: 3", "restart: Input should be a mapping"),
        ("metrics_listen: nope", "metrics_listen: 'nope' is not HOST:PORT"),
        ("coordinator: 'a:1,b'", "coordinator: 'b' is not HOST:PORT"),
        ("pull_policy: sometimes", "pull_policy: Input should be 'always', 'missing' or 'never'"),
        ("event_buffer: 5", "event_buffer: Input should be greater than or equal to 10"),
        ("event_buffer: many", "event_buffer: Input should be a valid integer"),
        ("memory_trim_interval_s: 0.5", "memory_trim_interval_s: must be 0 (never) or at least 1 second"),
        ("memory_trim_interval_s: -1", "memory_trim_interval_s: Input should be greater than or equal to 0"),
        ("malloc_arenas: -1", "malloc_arenas: Input should be greater than or equal to 0"),
        ("malloc_arenas: 1.5", "malloc_arenas: Input should be a valid integer"),
        ("log_json: maybe", "log_json: Input should be a valid boolean"),
        ("log_level: [info]", "log_level: Input should be a valid string"),
        ("bogus: 1", "bogus: Extra inputs are not permitted"),
        ("1: x\nlog_level: info", "1: Extra inputs are not permitted"),
        ("- a list", "mapping"),
    ],
)
def test_bad_agent_values_name_the_option(tmp_path: Path, text: str, needle: str) -> None:
    """The agent's options are a dataclass, not a pydantic model: the same promise to the operator."""
    cfg = tmp_path / "a.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load(AgentConfig, cfg)


def test_agent_options_from_the_environment_are_read_as_their_types(tmp_path: Path) -> None:
    cfg = tmp_path / "a.yaml"
    cfg.write_text("restart: {initial_delay_s: 2}\nmemory_mib: 512\n")
    env_map = {
        "A_DIR": "data_dir",
        "A_BEAT": "heartbeat_interval_s",
        "A_JSON": "log_json",
        "A_MEM": "memory_mib",
    }
    env = {"A_DIR": "/srv/agent", "A_BEAT": "2.5", "A_JSON": "false", "A_MEM": "1024"}
    loaded = load(AgentConfig, cfg, env=env, env_map=env_map, flags={"pull_policy": "never"})
    assert loaded.data_dir == Path("/srv/agent") and loaded.heartbeat_interval_s == 2.5
    assert loaded.log_json is False and loaded.memory_mib == 1024
    assert loaded.restart.initial_delay_s == 2.0 and loaded.restart.max_delay_s == 300.0
    assert loaded.pull_policy is PullPolicy.NEVER
