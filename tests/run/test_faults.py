"""Fault injection on the training loop: kill -9 at random points, once inside a checkpoint
write, then resume: the same parameters (bitwise) and exactly one metrics line per
evaluation as an uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from monarchpc import checkpoint
from monarchpc.paths import REPO_ROOT
from monarchpc.train import run
from tests.helpers import compose_config

SMALL = ["dataset=synthetic", "dataset.n_train=256", "dataset.n_dev=64", "dataset.n_test=64",
         "model=monarch2_hmm", "model.hidden_size=16", "optim.batch_size=32",
         "optim.accumulate=2", "optim.epochs=3", "trainer.eval_every=3",
         "trainer.checkpoint_every=1", "trainer.cpu_threads=1"]

KILLER = """
import json, os, random, signal, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)  # nothing parallel before fork
from monarchpc import files
from monarchpc.train import run
from tests.helpers import compose_config

overrides, run_dir = json.loads(sys.argv[1]), Path(sys.argv[2])
rng = random.Random(0)
for kind in json.loads(sys.argv[3]):
    resume = (run_dir / "checkpoint.pt").is_file()  # a run without one starts afresh
    cfg = compose_config([*overrides, f"resume={str(resume).lower()}"], run_dir)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        if kind == "checkpoint":  # stall in the 4th durable write: data written, no rename
            fsync, calls = files.os.fsync, [0]
            def stalled(fd):
                fsync(fd)
                calls[0] += 1
                if calls[0] == 4:
                    os.write(write, b"stalled\\n")
                    time.sleep(60)
            files.os.fsync = stalled
        else:
            os.write(write, b"started\\n")
        run(cfg)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        said = pipe.readline().strip()
        if kind == "random":
            time.sleep(rng.uniform(0.1, 1.0))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    print(json.dumps({"kind": kind, "said": said}), flush=True)
"""


def records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(ln).items() if k != "wall_time"} for ln in lines]


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_is_bitwise_equal(tmp_path: Path) -> None:
    full = tmp_path / "full"
    run(compose_config(SMALL, full))
    part = tmp_path / "part"
    kills = ["checkpoint", "random", "random"]
    out = subprocess.run([sys.executable, "-c", KILLER, json.dumps(SMALL), str(part),
                          json.dumps(kills)], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert out.returncode == 0, out.stderr[-3000:]
    said = [json.loads(line)["said"] for line in out.stdout.splitlines()]
    assert said == ["stalled", "started", "started"], out.stdout
    run(compose_config([*SMALL, f"resume={(part / 'checkpoint.pt').is_file()}".lower()], part))
    for name in (checkpoint.FILENAME, checkpoint.BEST):  # best.pt too: the same model
        a, b = checkpoint.load(full, filename=name), checkpoint.load(part, filename=name)
        for key in a["model"]:
            assert torch.equal(a["model"][key], b["model"][key]), (name, key)
    assert records(part) == records(full)
    assert [r["update"] for r in records(part)] == [0, 3, 6, 9, 12]
