"""Benchmarks write under outputs/bench/ unless asked for a record (``--record``): a run of
a benchmark never overwrites the committed records in docs/results/device/."""

from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path

import pytest

from monarchpc.bench import flows, records
from monarchpc.paths import REPO_ROOT

BENCH = REPO_ROOT / "monarchpc" / "bench"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    records.add_output_options(parser)
    return parser.parse_args(argv)


def test_destination_is_outputs_unless_a_record_is_asked_for(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(records, "OUTPUTS", tmp_path / "outputs" / "bench")
    monkeypatch.setattr(records, "RECORDS", tmp_path / "docs" / "results" / "device")
    assert records.destination(parse([]), "a.jsonl") == str(tmp_path / "outputs/bench/a.jsonl")
    assert records.destination(parse(["--record"]), "a.jsonl") == \
        str(tmp_path / "docs/results/device/a.jsonl")
    assert records.destination(parse(["--out", str(tmp_path / "x.jsonl")]), "a.jsonl") == \
        str(tmp_path / "x.jsonl")
    assert records.destination(parse(["--out", ""]), "a.jsonl") == ""  # print only
    assert (tmp_path / "outputs/bench").is_dir() and (tmp_path / "docs/results/device").is_dir()
    # the real folders: outputs/ is not committed, the records are
    assert records.OUTPUTS != REPO_ROOT / "docs" / "results" / "device"


@pytest.mark.parametrize("record", [False, True])
def test_a_benchmark_writes_where_it_is_told(record: bool, tmp_path: Path, monkeypatch,
                                             capsys) -> None:
    """The precision-flows benchmark, run in-process on a tiny case."""
    outputs, docs = tmp_path / "outputs", tmp_path / "device"
    monkeypatch.setattr(records, "OUTPUTS", outputs)
    monkeypatch.setattr(records, "RECORDS", docs)
    flows.main(["--cases", "dense-8-4", "--precisions", "bf16", "--device", "cpu",
                *(["--record"] if record else [])])
    written = docs if record else outputs
    assert [p.name for p in written.iterdir()] == ["precision_flows_hclt_cpu.jsonl"]
    assert not (outputs if record else docs).exists()
    row = json.loads((written / "precision_flows_hclt_cpu.jsonl").read_text())
    assert row == json.loads(capsys.readouterr().out)  # the line it printed


def test_every_benchmark_that_writes_takes_the_output_options() -> None:
    """Each bench module that writes records does it through records.destination (its
    --out / --record options), and no module names the committed records' folder in code
    (docstrings may)."""
    writers = []
    for path in sorted(BENCH.glob("*.py")):
        if path.name in ("records.py", "__init__.py", "__main__.py"):
            continue
        tree = ast.parse(path.read_text())
        calls = {n.func.id for n in ast.walk(tree)
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        if "JsonLines" in calls or "destination" in calls:
            assert {"add_output_options", "destination"} <= calls, path.name
            writers.append(path.stem)
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, ast.Module | ast.FunctionDef | ast.ClassDef) and n.body
                      and isinstance(n.body[0], ast.Expr)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and id(node) not in docstrings:
                assert "results/device" not in node.value, path.name
    assert writers == ["elements", "flows", "hclt", "hmm", "kernels", "profile", "recipe",
                       "reference"]
