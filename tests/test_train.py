"""The training loop: it learns, records every evaluation, resumes exactly, survives Ctrl-C,
and runs Hydra multiruns."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from monarchpc import checkpoint
from monarchpc.errors import RunDirError
from monarchpc.paths import REPO_ROOT
from monarchpc.train import run
from tests.helpers import compose_config

SMALL = ["dataset=synthetic", "dataset.n_train=256", "dataset.n_dev=64", "dataset.n_test=64",
         "model=monarch2_hmm", "model.hidden_size=16", "optim.batch_size=32",
         "optim.accumulate=2", "optim.epochs=3", "trainer.eval_every=3"]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_demo_sized_run_lowers_dev_bpc_and_writes_records(tmp_path: Path) -> None:
    run_dir = tmp_path / "demo"
    cfg = compose_config(["experiment=demo", "optim.epochs=1", "model.hidden_size=64",
                          "dataset.fractions=[0.3,0.05,0.05]",
                          "trainer.eval_every=10"], run_dir)
    final = run(cfg)
    recs = records(run_dir)
    assert recs[0]["update"] == 0 and recs[-1] is not recs[0] and recs[-1]["final"]
    assert recs[-1]["dev_bpc"] < recs[0]["dev_bpc"] - 0.5
    assert final["dev_bpc"] == recs[-1]["dev_bpc"]
    for key in ("epoch", "tokens", "train_flops", "step_size", "wall_time", "test_bpc",
                "test_long_bpc", "train_bpc"):
        assert key in recs[-1]
    assert recs[-1]["train_flops"] == 6 * recs[-1]["madds_per_token"] * recs[-1]["tokens"]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["madds_per_token"] == 64 * (8 + 8)
    assert info["factors"] == [8, 8] and info["final"]["dev_bpc"] == final["dev_bpc"]


# the reference's EM (running counts, floor, no pseudocount, text8 initialization) too:
# its running totals must travel in the checkpoint for an exact resume
REFERENCE_EM = ["optim.update=counts", "optim.pseudocount=0", "optim.floor=1e-10",
                "init.space_token=0"]


@pytest.mark.parametrize("em", [[], REFERENCE_EM], ids=["probs", "reference"])
def test_resume_equals_an_uninterrupted_run(tmp_path: Path, em: list[str]) -> None:
    full = tmp_path / "full"
    run(compose_config([*SMALL, *em], full))
    part = tmp_path / "part"
    run(compose_config([*SMALL, *em, "trainer.stop_after=5"], part))  # mid-epoch (4/epoch)
    assert json.loads((part / "run.json").read_text())["status"] == "interrupted"
    assert checkpoint.load(part)["trainer"]["update"] == 5
    run(compose_config([*SMALL, *em, "resume=true"], part))
    a, b = checkpoint.load(full), checkpoint.load(part)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    strip = lambda rs: [{k: v for k, v in r.items() if k != "wall_time"} for r in rs]  # noqa: E731
    assert strip(records(full)) == strip(records(part))
    # resuming a finished run changes nothing and keeps it finished
    run(compose_config([*SMALL, *em, "resume=true"], part))
    info = json.loads((part / "run.json").read_text())
    assert info["status"] == "finished" and info["final"]["dev_bpc"] == records(full)[-1]["dev_bpc"]
    assert strip(records(full)) == strip(records(part))


def test_resume_refuses_a_different_run_and_fresh_runs_refuse_to_overwrite(tmp_path: Path
                                                                          ) -> None:
    run_dir = tmp_path / "r"
    run(compose_config([*SMALL, "trainer.stop_after=2"], run_dir))
    try:
        run(compose_config(SMALL, run_dir))
    except Exception as err:
        assert "resume=true" in str(err)
    else:
        raise AssertionError("a fresh run overwrote an existing checkpoint")
    try:
        run(compose_config([*SMALL, "model.hidden_size=64", "resume=true"], run_dir))
    except Exception as err:
        assert "model config differs" in str(err)
    else:
        raise AssertionError("resumed a run with another model")


def cli(args: list[str], **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    flags = [a for a in args if a.startswith("-")]  # Hydra wants -m before the overrides
    overrides = [a for a in args if not a.startswith("-")]
    return subprocess.Popen([sys.executable, "-m", "monarchpc.train", *flags, "logger=none",
                             "trainer.progress=false", *overrides], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kwargs)


@pytest.mark.slow
def test_ctrl_c_leaves_a_checkpoint_and_resume_finishes(tmp_path: Path) -> None:
    args = [*SMALL, "optim.epochs=400", "trainer.eval_every=1000",
            "trainer.checkpoint_every=1", f"paths.output_dir={tmp_path}", "run_name=interrupted"]
    proc = cli(args)
    run_dir = tmp_path / "interrupted"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # wait for a few updates
        try:
            if json.loads((run_dir / "run.json").read_text())["updates"] >= 3:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out  # 128 + SIGINT: not finished, unlike exit 0
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "interrupted" and info["updates"] > 0, out
    assert "resume=true" in out
    state = checkpoint.load(run_dir)["trainer"]
    assert state["update"] == info["updates"] and state["micro"] % 2 == 0
    resumed = cli([*args, "resume=true", "optim.epochs=400", "trainer.stop_after=" +
                   str(state["update"] + 2)])
    out, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, out
    assert checkpoint.load(run_dir)["trainer"]["update"] == state["update"] + 2


@pytest.mark.slow
def test_hydra_multirun_leaves_one_run_directory_per_job(tmp_path: Path) -> None:
    proc = cli(["-m", "model=hmm,monarch2_hmm", "model.hidden_size=16", "dataset=synthetic",
                "dataset.n_train=64", "optim.epochs=1", f"paths.output_dir={tmp_path}"])
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    infos = sorted(json.loads(p.read_text())["block"]
                   for p in (tmp_path / "multirun").glob("*/*/run.json"))
    assert infos == ["dense", "monarch"], out


# A run that over-fits: 16 training rows, a 32-state HMM, constant step size 1 and almost no
# pseudocount. Its dev BPC falls for two updates and then rises to the end.
OVERFIT = ["dataset=synthetic", "dataset.n_train=16", "dataset.n_dev=64", "dataset.n_test=64",
           "model=hmm", "model.hidden_size=32", "optim.batch_size=16", "optim.epochs=8",
           "optim.schedule=constant", "optim.pseudocount=0.001", "trainer.eval_every=1",
           "trainer.device=cpu", "trainer.cpu_threads=1"]


def no_wall_time(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "wall_time"}


def dev_bpc(model: torch.nn.Module, run_dir: Path) -> float:
    """The model's dev BPC, computed here from the data (not read from any record)."""
    from monarchpc.data import build_dataset
    from monarchpc.use.load import load_config

    dev = build_dataset(load_config(run_dir).dataset).dev.long()
    with torch.no_grad():
        return -float(model.log_likelihood(dev).double().sum()) / dev.numel() / math.log(2)


def test_a_run_whose_dev_rises_keeps_its_best_model(tmp_path: Path) -> None:
    from monarchpc.use.load import load_run

    run_dir = tmp_path / "overfit"
    final = run(compose_config(OVERFIT, run_dir))
    recs = records(run_dir)
    lowest = min(recs, key=lambda r: r["dev_bpc"])
    assert final["dev_bpc"] > lowest["dev_bpc"] + 0.02  # it over-fits: best != last
    info = json.loads((run_dir / "run.json").read_text())
    assert info["best"] == {**lowest, "checkpoint": "best.pt"}
    assert info["final"]["update"] == recs[-1]["update"] > lowest["update"]
    best = checkpoint.load(run_dir, filename=checkpoint.BEST)
    assert best["best"]["update"] == best["trainer"]["update"] == lowest["update"]
    # the saved models score what the loop recorded at their evaluations
    model, _ = load_run(run_dir)  # best.pt by default
    assert dev_bpc(model, run_dir) == pytest.approx(lowest["dev_bpc"], abs=1e-6)
    model, _ = load_run(run_dir, checkpoint="last")
    assert dev_bpc(model, run_dir) == pytest.approx(final["dev_bpc"], abs=1e-6)
    # keep_best=false: the best evaluation is still recorded, no best.pt
    off = tmp_path / "off"
    run(compose_config([*OVERFIT, "trainer.keep_best=false"], off))
    info = json.loads((off / "run.json").read_text())
    assert no_wall_time(info["best"]) == no_wall_time({**lowest, "checkpoint": None})
    assert not (off / checkpoint.BEST).exists()
    with pytest.raises(RunDirError, match=r"no best\.pt"):
        load_run(off, checkpoint="best")
    model, _ = load_run(off)  # auto: the last
    assert dev_bpc(model, off) == pytest.approx(final["dev_bpc"], abs=1e-6)


class Crash(BaseException):
    """The process dying (kill -9) between two writes."""


@pytest.mark.parametrize("stop", ["after_best", "between_writes"])
def test_resume_ends_with_the_best_model_of_an_uninterrupted_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop: str) -> None:
    full = tmp_path / "full"
    run(compose_config(OVERFIT, full))
    best_update = json.loads((full / "run.json").read_text())["best"]["update"]
    part = tmp_path / "part"
    if stop == "after_best":  # an interruption past the best evaluation
        run(compose_config([*OVERFIT, f"trainer.stop_after={best_update + 3}"], part))
    else:  # killed after the checkpoint of the best update, before best.pt was written
        save = checkpoint.save

        def crashing(run_dir, model, state, config, filename=checkpoint.FILENAME, **kw):
            if filename == checkpoint.BEST and state["update"] == best_update:
                raise Crash
            return save(run_dir, model, state, config, filename, **kw)

        monkeypatch.setattr(checkpoint, "save", crashing)
        with pytest.raises(Crash):
            run(compose_config(OVERFIT, part))
        monkeypatch.setattr(checkpoint, "save", save)
        assert checkpoint.load(part)["trainer"]["update"] == best_update
        held = checkpoint.load(part, filename=checkpoint.BEST)["best"]["update"]
        assert held < best_update  # best.pt holds an older model
    run(compose_config([*OVERFIT, "resume=true"], part))
    a = checkpoint.load(full, filename=checkpoint.BEST)
    b = checkpoint.load(part, filename=checkpoint.BEST)
    assert no_wall_time(a["best"]) == no_wall_time(b["best"])
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    info = [json.loads((d / "run.json").read_text())["best"] for d in (full, part)]
    assert [no_wall_time(i) for i in info] == [no_wall_time(info[0])] * 2
    assert info[1]["checkpoint"] == "best.pt"
