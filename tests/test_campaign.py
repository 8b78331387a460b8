"""scripts/campaign.py: jobs files and records exported without absolute paths."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from monarchpc.files import file_sha256
from monarchpc.paths import REPO_ROOT
from tests.helpers import compose_config

spec = importlib.util.spec_from_file_location("campaign", REPO_ROOT / "scripts" / "campaign.py")
campaign = importlib.util.module_from_spec(spec)
spec.loader.exec_module(campaign)


CAMPAIGNS = {  # jobs file -> its common overrides (data paths as placeholders), job count
    "text8_prefix.txt": (["dataset=chars", "dataset.paths=[text.xz]", "logger=none"], 30),
    "wikitext2.txt": (["dataset.path=wiki.valid.raw", "logger=none"], 4),
    "tiny_imagenet.txt": (["experiment=tiny_imagenet32_monarch_hclt", "dataset.train=val.tar",
                           "dataset.test=null", "logger=none"], 12),
}


@pytest.mark.parametrize("name", sorted(CAMPAIGNS))
def test_every_job_of_a_campaign_passes_the_config_checks(name: str) -> None:
    from monarchpc.config_checks import check_config

    common, count = CAMPAIGNS[name]
    jobs = campaign.read_jobs(REPO_ROOT / "docs/results/campaigns" / name, common)
    assert len(jobs) >= count and all(o[:len(common)] == common for _, o in jobs)
    for _, overrides in jobs:
        check_config(compose_config(overrides))


def test_repeated_job_names_are_refused(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("a: model=hmm  # a comment\n\n# only a comment\na: model=hmm\n")
    with pytest.raises(SystemExit, match="job names repeat"):
        campaign.read_jobs(jobs, [])


def test_export_leaves_no_absolute_path(tmp_path: Path) -> None:
    data = tmp_path / "text.txt"
    data.write_text("some text")
    run = tmp_path / "run"
    run.mkdir()
    inside = str(REPO_ROOT / "outputs" / "factors" / "f1")
    (run / "run.json").write_text(json.dumps({"data": {"files": [str(data)]},
                                              "factor_runs": [inside], "final": {"x": 1}}))
    (run / "metrics.jsonl").write_text('{"update": 0}\n')
    (run / "config.yaml").write_text(yaml.safe_dump({"run_dir": str(run), "paths": [inside]}))
    campaign.export(run, tmp_path / "out" / "run", gpu_seconds=12.34)
    out = tmp_path / "out" / "run"
    text = (out / "run.json").read_text() + (out / "config.yaml").read_text()
    assert str(tmp_path) not in text and str(REPO_ROOT) not in text
    info = json.loads((out / "run.json").read_text())
    assert info["data"]["files"] == [{"name": "text.txt", "bytes": 9,
                                      "sha256": file_sha256(data)}]
    assert info["factor_runs"] == ["outputs/factors/f1"] and info["gpu_seconds"] == 12.3
    assert (out / "metrics.jsonl").read_text() == '{"update": 0}\n'
