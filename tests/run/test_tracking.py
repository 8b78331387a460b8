"""metrics.jsonl: exactly one line per evaluation across any number of interruptions; a
partial last line dropped; wandb quiet but for one line saying where its run is."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from monarchpc.errors import DataError
from monarchpc.paths import REPO_ROOT
from monarchpc.run.tracking import METRICS, Tracker


def updates(run_dir: Path) -> list[int]:
    return [json.loads(ln)["update"] for ln in (run_dir / METRICS).read_text().splitlines()]


def tracker(run_dir: Path) -> Tracker:
    return Tracker(run_dir, {"name": "none"}, {})


def test_a_partial_last_line_is_dropped_and_complete_ones_kept(tmp_path: Path) -> None:
    (tmp_path / METRICS).write_text('{"update": 0, "dev_bpc": 4.0}\n{"update": 5, "dev_b')
    t = tracker(tmp_path)
    assert updates(tmp_path) == [0] and t.last_record() == {"update": 0, "dev_bpc": 4.0}
    t.log({"update": 5, "dev_bpc": 3.0})
    assert updates(tmp_path) == [0, 5]
    (tmp_path / METRICS).write_text('{"update": 0}\n{"update": 5}')  # whole, but no newline
    tracker(tmp_path).log({"update": 10})
    assert updates(tmp_path) == [0, 5, 10]


def test_a_corrupt_line_before_the_end_is_an_error(tmp_path: Path) -> None:
    (tmp_path / METRICS).write_text('{"update": 0}\nnot json\n{"update": 5}\n')
    with pytest.raises(DataError, match=f"{METRICS} line 2 is not an evaluation record"):
        tracker(tmp_path)


def test_a_record_for_an_update_already_recorded_replaces_it_and_later_ones(tmp_path: Path
                                                                           ) -> None:
    t = tracker(tmp_path)
    for u in (0, 3, 6):
        t.log({"update": u})
    t.log({"update": 3, "again": True})
    assert updates(tmp_path) == [0, 3] and t.last_record()["again"]
    t.truncate_after(0)
    assert updates(tmp_path) == [0]
    t.log({"update": 0, "again": True})  # a resume from the update-0 checkpoint
    assert updates(tmp_path) == [0] and len(tracker(tmp_path).records) == 1


class Killed(Exception):
    pass


def interrupted_run(run_dir: Path, total: int, every: int, kills: set[int]) -> None:
    """The training loop's order of writes, killed at the steps in ``kills``, then resumed
    until it finishes: checkpoint at 0, evaluate at 0; every ``every`` updates (and at the
    end) evaluate, then checkpoint. A kill in an evaluation leaves half a line."""
    step = 0

    def maybe_kill(t: Tracker, record: dict | None = None) -> None:
        nonlocal step
        step += 1
        if step in kills:
            if record is not None:
                with open(t.metrics_path, "a") as f:
                    f.write(json.dumps(record)[:7])  # a write cut short
            raise Killed

    saved = None  # the update of the checkpoint
    while True:
        t = tracker(run_dir)
        try:
            if saved is None:
                maybe_kill(t)
                saved = 0
            update = saved
            t.truncate_after(update)
            if update == 0:
                maybe_kill(t, {"update": 0})
                t.log({"update": 0})
            while update < total:
                update += 1
                if update % every == 0 or update == total:
                    maybe_kill(t, {"update": update})
                    t.log({"update": update})
                    maybe_kill(t)
                    saved = update
            return
        except Killed:
            continue


def test_one_line_per_evaluation_across_any_interruptions(tmp_path: Path) -> None:
    rng = random.Random(0)
    for trial in range(30):
        run_dir = tmp_path / str(trial)
        run_dir.mkdir()
        kills = set(rng.sample(range(1, 14), rng.randint(0, 6)))
        interrupted_run(run_dir, total=10, every=3, kills=kills)
        assert updates(run_dir) == [0, 3, 6, 9, 10], kills


WANDB = """
import logging, sys
from pathlib import Path
from monarchpc.run.tracking import Tracker
logging.basicConfig(level=logging.INFO, format="%(message)s")
t = Tracker(Path(sys.argv[1]), {"name": "wandb", "mode": "offline"}, {"seed": 0})
t.log({"update": 0, "dev_bpc": 4.5, "train_flops": 0})
t.close()
"""


@pytest.mark.slow
def test_wandb_says_one_line_where_its_offline_run_is(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), WANDB_MODE="offline")
    for key in ("WANDB_SILENT", "WANDB_CONSOLE", "WANDB_QUIET"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-c", WANDB, str(tmp_path)], env=env, timeout=120,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    [offline] = list((tmp_path / "wandb").glob("offline-run-*"))
    assert lines == [f"wandb: offline run in {offline}; upload it with `wandb sync {offline}`"]


def test_a_full_disk_while_appending_gives_one_line(tmp_path: Path) -> None:
    from tests.test_checkpoint import file_size_limit

    t = tracker(tmp_path)
    t.log({"update": 0})
    with file_size_limit((tmp_path / METRICS).stat().st_size + 10), \
            pytest.raises(DataError, match=r"cannot append to .*free disk space") as err:
        t.log({"update": 3, "dev_bpc": 2.123456789, "test_bpc": 2.2})
    assert "\n" not in str(err.value)
    assert tracker(tmp_path).records == [{"update": 0}]  # the resumed run drops the cut line
    assert updates(tmp_path) == [0]
