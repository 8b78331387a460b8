"""Every preset and group option composes; bad settings fail at start with one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from monarchpc.circuits.blocks import BlockSpec
from monarchpc.config import check_config as validate
from monarchpc.errors import ConfigError
from monarchpc.paths import REPO_ROOT
from monarchpc.train import run
from tests.helpers import compose_config, with_user_data

CONFIGS = REPO_ROOT / "configs"


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


TEXT8 = {  # REFERENCE.md, Data and Learning: text8's split, rows, schedule
    "dataset.name": "text8", "dataset.split": [90_000_000, 5_000_000, 5_000_000],
    "dataset.seq_len": 256, "dataset.long_rows": 125,  # the 5M test characters as 125 rows
    "effective_batch": 4096, "optim.epochs": 20, "optim.schedule": "linear",
    "optim.eta0": 1.0, "optim.eta_min": 0.0}
LM1B = {"dataset.name": "lm1b", "dataset.vocab_size": 8192, "dataset.seq_len": 128,
        "optim.epochs": 2}  # REFERENCE.md: SentencePiece 8192, packed to 128, 2 epochs
IMAGES = {"model.structure": "hclt", "optim.schedule": "cosine",  # REFERENCE.md, images
          "dataset.patch_size": 8,  # the reference script's default patch
          "model.chow_liu_rows": 20_000}
MONARCH_HCLT = {"model.block": "monarch", "model.monarch_layers": 3}  # three layers
# Each preset's recipe: the paper's facts (/work/shared/REFERENCE.md) it reproduces.
PAPER_RECIPES = {
    "text8_hmm": TEXT8 | {"model.structure": "hmm", "model.block": "dense",
                          "model.hidden_size": 2**15},  # Table B.2's largest dense HMM
    "text8_monarch2": TEXT8 | {"model.block": "monarch", "model.hidden_size": 2**19,
                               "model.factors": [512, 1024], "init.name": "multiply",
                               # dense factor HMMs of 512 and 1024: batch 1024, 20 epochs
                               "init.optim.batch_size": 1024, "init.optim.accumulate": 1,
                               "init.optim.epochs": 20},
    "text8_ablation_init": TEXT8, "sweep_b2_hmm": TEXT8, "sweep_b2_monarch2": TEXT8,
    "sweep_b2_monarch3": TEXT8 | {"model.k": 3}, "sweep_b2_monarch4": TEXT8 | {"model.k": 4},
    "lm1b_hmm": LM1B | {"model.block": "dense"},
    "lm1b_monarch2": LM1B | {"model.block": "monarch", "model.k": 2},
    "sweep_lm1b": LM1B,
    "imagenet32_monarch_hclt": IMAGES | MONARCH_HCLT | {"dataset.resolution": 32},
    "imagenet64_monarch_hclt": IMAGES | MONARCH_HCLT | {"dataset.resolution": 64},
    "sweep_fig7": IMAGES | {"dataset.resolution": 64},
    "tiny_imagenet32_monarch_hclt": IMAGES | MONARCH_HCLT,
}
# Presets that are not a paper recipe: CPU-sized demos and runs on other data.
LOCAL_PRESETS = {"demo", "image_demo", "chars_text8_prefix", "wikitext2_hmm",
                 "wikitext2_monarch2"}


def recipe_value(cfg, key: str):
    if key == "effective_batch":
        return cfg.optim.batch_size * cfg.optim.accumulate
    value = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_preset_composes_validates_and_keeps_its_recipe(
        experiment: str) -> None:
    """Every preset composes, resolves and passes the checks; a paper preset holds the
    paper's recipe values (a new preset must be listed as one or the other)."""
    cfg = with_user_data(compose_config([f"experiment={experiment}"]))
    OmegaConf.resolve(cfg)  # every interpolation resolves
    validate(cfg)
    assert (experiment in PAPER_RECIPES) != (experiment in LOCAL_PRESETS), experiment
    for key, want in PAPER_RECIPES.get(experiment, {}).items():
        assert recipe_value(cfg, key) == want, (experiment, key)


@pytest.mark.parametrize("model", options("model"))
@pytest.mark.parametrize("group", ["dataset", "optim", "trainer", "logger", "init"])
def test_every_group_option_composes(model: str, group: str) -> None:
    for option in options(group):
        cfg = with_user_data(compose_config([f"model={model}", f"{group}={option}"]))
        OmegaConf.resolve(cfg)
        if option == "multiply" and cfg.model.structure != "hmm":  # a product of HMMs
            with pytest.raises(ConfigError, match="init=multiply builds HMMs"):
                validate(cfg)
            continue
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
    with pytest.raises(ConfigError, match=r"dataset\.name='text9': must be one of"):
        run(cfg)  # refused by the config checks, before any data is touched


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.hidden_size=1000", "model.factors=[16,16]"], "is not the product of model.factors"),
    (["model=monarch2_hmm", "model.hidden_size=13"], "cannot be factored into 2 factors"),
    (["dataset=text8", "dataset.download=false", "dataset.root=/nonexistent/text8"],
     "download http://mattmahoney.net/dc/text8.zip (31,344,016 bytes)"),
])
@pytest.mark.slow
def test_cli_fails_with_one_clear_line(tmp_path: Path, overrides: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "monarchpc.train", "logger=none",
         f"paths.output_dir={tmp_path}", *overrides],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert result.returncode == 2
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("monarchpc: error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def sweep_params(experiment: str) -> dict[str, list[str]]:
    """The Hydra multirun parameters a preset declares (hydra.sweeper.params)."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    return {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}


# Table B.2 of the paper: FLOPs per token of every text8 run it lists, by column.
TABLE_B2_FLOPS = {
    "hmm": [16777216, 67108864, 268435456, 1073741824],
    "monarch2": [524288, 1572864, 4194304, 12582912, 33554432, 100663296, 268435456,
                 805306368],
    "monarch3": [196608, 524288, 1310720, 3145728, 8388608],
    "monarch4": [131072, 327680, 786432, 1835008],
}


@pytest.mark.parametrize("column", sorted(TABLE_B2_FLOPS))
def test_table_b2_sweeps_cover_the_papers_flops(column: str) -> None:
    flops = []
    for size in sweep_params(f"sweep_b2_{column}")["model.hidden_size"]:
        cfg = compose_config([f"experiment=sweep_b2_{column}", f"model.hidden_size={size}"])
        validate(cfg)
        flops.append(BlockSpec.from_config(cfg.model).madds)
        assert cfg.dataset.name == "text8" and cfg.optim.epochs == 20
        assert cfg.optim.batch_size * cfg.optim.accumulate == 4096
        assert cfg.init.name == ("random" if column == "hmm" else "multiply")
    assert flops == TABLE_B2_FLOPS[column]


def test_main_text8_recipe_and_init_ablation_presets() -> None:
    """(Its recipe values: PAPER_RECIPES above.) The long evaluation runs at the end; the
    init ablation sweeps both initializations at four sizes (REFERENCE.md: Table 2)."""
    cfg = compose_config(["experiment=text8_monarch2"])
    assert cfg.trainer.long_eval == "final"
    params = sweep_params("text8_ablation_init")
    assert sorted(params["init"]) == ["multiply", "random"]
    assert len(params["model.hidden_size"]) == 4


@pytest.mark.slow
def test_help_lists_every_setting_with_its_meaning() -> None:
    result = subprocess.run([sys.executable, "-m", "monarchpc.train", "--help"],
                            capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert "optim.update: the EM update" in result.stdout
    assert "trainer.eval_every: updates between evaluations" in result.stdout
    assert "model: hclt, hmm, monarch2_hmm" in result.stdout  # the groups and their options
