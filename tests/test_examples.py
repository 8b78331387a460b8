"""Every script of examples/ runs as a newcomer runs it, at its tiny size (``--tiny``).

Each example asserts its own claims (EM learned more than a uniform guess, a block is
row-stochastic, a circuit's probabilities add up to 1, a bad setting is refused with one
line), so a clean exit means they held; the lines checked here are those its docstring
promises.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from monarchpc.paths import REPO_ROOT

EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.py"))

# what each example must print (besides exiting 0)
PRINTS = {
    "train_and_query.py": ["trained: dev BPC", "loaded a monarch2_hmm", "sample: 'the value ",
                           "p(x_2 | 'th_ f_nction'):"],
    "custom_dataset.py": ["refused: dataset.package='no_such_package'", "json source: dev BPC"],
    "custom_block.py": ["sum of p(x) over all 81 sequences: 1.0000", "custom (axes 0,1,2,0)",
                        "dense"],
}


def test_every_example_is_listed() -> None:
    assert {p.name for p in EXAMPLES} == set(PRINTS)
    index = (REPO_ROOT / "examples" / "README.md").read_text()
    assert all(name in index for name in PRINTS)


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_at_its_tiny_size(script: Path, tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    args = ["--tiny"] + (["--out", str(tmp_path / "run")] if "--out" in script.read_text()
                         else [])
    done = subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for line in PRINTS[script.name]:
        assert line in done.stdout, (line, done.stdout)
