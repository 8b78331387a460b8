"""The test helpers that decide whether a test runs: real data is skipped where it is
absent, but fails the test where CI requires it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import real_data


def test_missing_real_data_skips_or_fails_where_required(tmp_path: Path, monkeypatch) -> None:
    there = tmp_path / "there.xz"
    there.write_bytes(b"x")
    assert real_data(there, "a file") == there
    monkeypatch.delenv("MONARCHPC_REQUIRE_DATA", raising=False)
    with pytest.raises(pytest.skip.Exception, match="a file not found at"):
        real_data(tmp_path / "absent.xz", "a file")
    monkeypatch.setenv("MONARCHPC_REQUIRE_DATA", "1")
    with pytest.raises(pytest.fail.Exception, match="MONARCHPC_REQUIRE_DATA=1"):
        real_data(tmp_path / "absent.xz", "a file")
