"""The GPU tier's record (tests/gpu/record.py), from made-up reports: runs on any machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.gpu import record


def report(nodeid: str, when: str, outcome: str, longrepr: object = None) -> pytest.TestReport:
    return pytest.TestReport(nodeid, ("f.py", 1, nodeid), {}, outcome, longrepr, when,
                             duration=0.5)


def test_the_record_counts_each_tests_outcome_once(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(record, "RESULTS", {})
    for r in [report("t::a", "setup", "passed"), report("t::a", "call", "passed"),
              report("t::a", "teardown", "passed"),
              report("t::b", "setup", "passed"), report("t::b", "call", "failed",
                                                         "long trace\nE   assert 1 == 2"),
              report("t::b", "teardown", "passed"),
              report("t::c", "setup", "skipped", ("f.py", 3, "Skipped: needs a CUDA GPU")),
              report("t::c", "teardown", "passed"),
              report("t::d", "setup", "failed", "fixture broke")]:
        record.collect(r)
    path = record.write(str(tmp_path / "dev"), 1, ["-m", "gpu", "tests/gpu"])
    r = json.loads(path.read_text())
    assert path.name.startswith("test_gpu_") and r["exit_status"] == 1
    assert r["counts"] == {"passed": 1, "failed": 1, "error": 1, "skipped": 1}
    tests = {t["test"]: t for t in r["tests"]}
    assert tests["t::a"]["seconds"] == pytest.approx(1.5)
    assert tests["t::b"]["message"] == "E   assert 1 == 2"
    assert tests["t::c"]["message"] == "Skipped: needs a CUDA GPU"
    assert r["command"] == "pytest -m gpu tests/gpu" and "torch" in r["versions"]
