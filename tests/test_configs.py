"""Every preset and group option composes; bad settings fail at start with one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from monarchpc.circuits.factory import ConfigError
from monarchpc.data import DataError
from monarchpc.paths import REPO_ROOT
from monarchpc.train import run, validate
from tests.helpers import compose_config

CONFIGS = REPO_ROOT / "configs"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_preset_composes_and_validates(experiment: str) -> None:
    cfg = compose_config([f"experiment={experiment}"])
    OmegaConf.resolve(cfg)  # every interpolation resolves
    validate(cfg)


@pytest.mark.parametrize("model", options("model"))
@pytest.mark.parametrize("group", ["dataset", "optim", "trainer", "logger", "init"])
def test_every_group_option_composes(model: str, group: str) -> None:
    for option in options(group):
        cfg = compose_config([f"model={model}", f"{group}={option}"])
        OmegaConf.resolve(cfg)
        validate(cfg)


def test_hidden_size_that_does_not_factor_is_rejected() -> None:
    cfg = compose_config(["model=monarch2_hmm", "model.hidden_size=1000",
                          "model.factors=[16,16]"])
    with pytest.raises(ConfigError, match=r"not the product of model\.factors"):
        validate(cfg)


def test_vocabulary_mismatch_is_rejected(tmp_path: Path) -> None:
    cfg = compose_config(["model=hmm", "model.hidden_size=8", "model.vocab_size=30"],
                         tmp_path / "run")
    with pytest.raises(ConfigError, match=r"model\.vocab_size=30 but dataset demo has a "
                                          r"vocabulary of 27"):
        run(cfg)


def test_unknown_dataset_is_rejected(tmp_path: Path) -> None:
    cfg = compose_config(["dataset.name=text9"], tmp_path / "run")
    with pytest.raises(DataError, match="unknown dataset 'text9'"):
        run(cfg)


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.hidden_size=1000", "model.factors=[16,16]"], "is not the product of model.factors"),
    (["model=monarch2_hmm", "model.hidden_size=13"], "cannot be factored into 2 factors"),
    (["dataset=text8", "dataset.download=false", "dataset.root=/nonexistent/text8"],
     "download http://mattmahoney.net/dc/text8.zip (31,344,016 bytes)"),
])
def test_cli_fails_with_one_clear_line(tmp_path: Path, overrides: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "monarchpc.train", "logger=none",
         f"paths.output_dir={tmp_path}", *overrides],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert result.returncode == 2
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("monarchpc: error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
