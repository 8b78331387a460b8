"""Fault injection on init=multiply's factor runs (issue 29): a damaged cache, the message
and exit status of a stopped factor run, and children of init.parallel=true whose parent
is killed. Each probe would fail without its fix."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from monarchpc.errors import DataError, Interrupted
from monarchpc.init.factor_runs import (
    FactorRunIncomplete,
    factor_config,
    is_finished,
    run_name,
    train_factor,
)
from monarchpc.paths import REPO_ROOT
from monarchpc.train import run
from tests.helpers import compose_config
from tests.init.test_multiply import TINY


@pytest.mark.parametrize("text", ["[1]\n", "{bad json\n", "\"finished\"\n"])
def test_a_damaged_factor_run_json_is_one_line(tmp_path: Path, text: str) -> None:
    (tmp_path / "run.json").write_text(text)
    with pytest.raises(DataError, match=r"run.json .*delete that directory to train it "
                                        r"again") as err:
        is_finished(tmp_path)
    assert "\n" not in str(err.value)


def test_a_damaged_factor_cache_stops_the_run_with_one_line(tmp_path: Path) -> None:
    cfg = compose_config([*TINY, "init=multiply"], tmp_path / "run")
    config = factor_config(cfg, 4, 0)
    (tmp_path / "factors" / run_name(config)).mkdir(parents=True)
    (tmp_path / "factors" / run_name(config) / "run.json").write_text("[1]")
    with pytest.raises(DataError, match="holds a JSON list, not an object"):
        run(cfg)


def test_a_stopped_factor_run_says_to_rerun_the_command(tmp_path: Path) -> None:
    """Not ``resume=true run_name=<factor>`` (that would train the factor as the main run):
    the same command again; and it exits 128 + the signal like any stopped run."""
    config = factor_config(compose_config([*TINY, "init=multiply", "optim.epochs=100000",
                                           "trainer.checkpoint_every=1"], tmp_path / "run"),
                           4, 0)
    run_dir = tmp_path / "factors" / run_name(config)

    def terminate() -> None:
        while not (run_dir / "checkpoint.pt").is_file():
            time.sleep(0.02)
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate, daemon=True).start()
    with pytest.raises(FactorRunIncomplete) as err:
        train_factor(config, tmp_path / "factors", run)
    assert isinstance(err.value, Interrupted) and err.value.exit_code == 143
    assert "run the same command again" in str(err.value)
    assert "run_name" not in str(err.value) and "resume=true" not in str(err.value)
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"


PARENT = """
import json, sys
from pathlib import Path
from monarchpc.init.factor_runs import train_parallel
train_parallel([json.loads(sys.argv[1])], Path(sys.argv[2]))
"""


@pytest.mark.slow
def test_parallel_factor_runs_stop_when_their_parent_is_killed(tmp_path: Path) -> None:
    config = factor_config(compose_config([*TINY, "init=multiply", "optim.epochs=100000",
                                           "trainer.checkpoint_every=1",
                                           "trainer.cpu_threads=1"], tmp_path / "run"), 4, 0)
    config["trainer"]["progress"] = False
    cache = tmp_path / "factors"
    run_dir = cache / run_name(config)
    parent = subprocess.Popen([sys.executable, "-c", PARENT, json.dumps(config), str(cache)],
                              env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (run_dir / "checkpoint.pt").is_file():
            time.sleep(0.05)
        assert (run_dir / "checkpoint.pt").is_file(), "the child never trained"
        parent.kill()  # kill -9: the parent can forward nothing
        parent.wait()
        deadline = time.time() + 60
        status = None
        while time.time() < deadline and status != "interrupted":
            time.sleep(0.1)
            status = json.loads((run_dir / "run.json").read_text())["status"]
        assert status == "interrupted"  # the orphan stopped itself, with a checkpoint
        updates = json.loads((run_dir / "run.json").read_text())["updates"]
        time.sleep(1.0)
        assert json.loads((run_dir / "run.json").read_text())["updates"] == updates
        assert "stopped by SIGTERM" in (run_dir / "factor.log").read_text()
    finally:
        if parent.poll() is None:
            parent.kill()
