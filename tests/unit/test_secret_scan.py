"""The suite's secret scan (tests/conftest.py) must be able to fail."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import scan


def test_the_secret_scan_finds_a_leak(tmp_path: Path) -> None:
    (tmp_path / "ca.key").write_text(
        "-----BEGIN PRIVATE KEY-----\nQUJDREVGR0hJSktMTU5PUFFSU1RVVldY\n-----END"
    )
    assert scan(['{"x": "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"}'], [tmp_path])
    key = "mrg_" + "a" * 43
    assert scan([f'{{"key": "{key}"}}', f'{{"again": "{key}"}}'], [])
    assert not scan([f'{{"key": "{key}"}}'], [tmp_path])
