"""lab/campaign.py: jobs files and records exported without absolute paths."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

from monarchpc.files import file_sha256
from monarchpc.paths import REPO_ROOT
from tests.helpers import compose_config

spec = importlib.util.spec_from_file_location("campaign", REPO_ROOT / "lab" / "campaign.py")
campaign = importlib.util.module_from_spec(spec)
sys.modules["campaign"] = campaign  # (its dataclasses look their module up there)
spec.loader.exec_module(campaign)


CAMPAIGNS = {  # jobs file -> its common overrides (data paths as placeholders), job count
    "text8_prefix.txt": (["dataset=chars", "dataset.paths=[text.xz]", "logger=none"], 35),
    "wikitext2.txt": (["dataset.path=wiki.valid.raw", "logger=none"], 4),
    "tiny_imagenet.txt": (["experiment=tiny_imagenet32_monarch_hclt", "dataset.train=val.tar",
                           "dataset.test=null", "logger=none"], 12),
    "tiny_imagenet_full.txt": (["experiment=tiny_imagenet32_monarch_hclt",
                                "dataset.train=train.tar", "dataset.test=val.tar",
                                "dataset.dev_from=test", "logger=none"], 12),
}


@pytest.mark.parametrize("name", sorted(CAMPAIGNS))
def test_every_job_of_a_campaign_passes_the_config_checks(name: str) -> None:
    from monarchpc.config import check_config

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


def test_scheduler_packs_jobs_keeps_solo_jobs_alone_and_records_sharing(tmp_path: Path) -> None:
    """One GPU, two jobs at a time: the solo job runs alone, the others pair up; each
    record says how many jobs its GPU ran at once; past --last-start nothing starts."""
    def sleeper(seconds: float):
        return lambda name, overrides, run_dir: [sys.executable, "-c",
                                                 f"import time; time.sleep({seconds})"]

    jobs = [("big", []), ("a", []), ("b", []), ("c", [])]
    done = campaign.run_jobs(jobs, tmp_path, gpus=1, per_gpu=2, deadline=60,
                             solo=frozenset({"big"}), command=sleeper(0.6), poll_s=0.05)
    assert done["big"][1] == 1 and done["a"][1] == done["b"][1] == 2
    assert all(0.5 < seconds < 30 for seconds, _ in done.values())
    assert campaign.recorded_seconds(tmp_path, "a") == (round(done["a"][0], 1), 2)
    late = campaign.run_jobs([("d", [])], tmp_path / "late", gpus=1, per_gpu=1, deadline=60,
                             last_start=-1, command=sleeper(0.1), poll_s=0.05)
    assert late == {} and campaign.recorded_seconds(tmp_path / "late", "d") is None


@pytest.mark.slow
def test_a_run_stopped_on_one_machine_resumes_on_the_next(tmp_path: Path) -> None:
    """--keep copies a run stopped mid-way (checkpoint, records, process seconds) out of the
    first machine's folder; --resume-from seeds the next one, where it resumes and finishes
    with the seconds of both invocations added up."""
    tiny = ["dataset=synthetic", "dataset.n_train=64", "dataset.n_dev=16", "dataset.n_test=16",
            "dataset.seq_len=8", "model=hmm", "model.hidden_size=4", "optim.batch_size=16",
            "optim.epochs=2", "trainer.device=cpu", "logger=none", "trainer.progress=false"]
    first, kept, second = tmp_path / "first", tmp_path / "kept", tmp_path / "second"
    done = campaign.run_jobs([("job", [*tiny, "trainer.stop_after=3"])], first, 1, 1, 600)
    assert campaign.status(first / "job") == "interrupted"
    assert campaign.keep_interrupted(first, ["job", "missing"], kept, max_mb=40) == ["job"]
    assert campaign.keep_interrupted(first, ["job"], tmp_path / "none", max_mb=0) == []
    assert campaign.seed_from(kept, second, ["job"]) == ["job"]
    assert campaign.recorded_seconds(second, "job") == (round(done["job"][0], 1), 1)
    (second / "job.seconds").write_text('{"seconds": 1000.0, "jobs_per_gpu": 2}')
    again = campaign.run_jobs([("job", tiny)], second, 1, 1, 600)
    assert campaign.status(second / "job") == "finished"
    info = json.loads((second / "job" / "run.json").read_text())
    assert info["updates"] == 8  # 4 per epoch, 2 epochs: 3 before, 5 after
    assert 1000 < again["job"][0] < 1100 and again["job"][1] == 2  # both invocations' seconds
    assert campaign.recorded_seconds(second, "job") == (round(again["job"][0], 1), 2)
    assert campaign.seed_from(kept, second, ["job"]) == []  # a checkpoint there already


def test_jobs_run_on_the_gpus_the_campaign_was_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """With CUDA_VISIBLE_DEVICES=2,3 the campaign's GPU 1 is device 3, not device 1."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert [campaign.visible_device(g) for g in (0, 1)] == ["2", "3"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert campaign.visible_device(1) == "1"
