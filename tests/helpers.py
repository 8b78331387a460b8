"""Test helpers: compose the project's Hydra config as the CLI would."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

import monarchpc.train  # noqa: F401  (registers the repo_root resolver)
from monarchpc.paths import REPO_ROOT

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
TEXT8_PREFIX = SHARED_DATA / "text8_prefix" / "text8_first12500000.xz"


def compose_config(overrides: list[str], run_dir: Path | None = None) -> DictConfig:
    """The composed training config for ``overrides`` (logger off, no progress bar).

    With ``run_dir``, the run writes there and outputs/data caches go beside it.
    """
    base = ["logger=none", "trainer.progress=false"]
    if run_dir is not None:
        base += [f"run_dir={run_dir}", f"paths.output_dir={run_dir.parent}",
                 f"paths.data_dir={run_dir.parent / 'data'}"]
    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs"), version_base="1.3"):
        return compose("train", overrides=base + overrides)


def with_user_data(cfg: DictConfig) -> DictConfig:
    """``cfg`` with every setting the user must give (``???``: data files) filled in with a
    placeholder path, for tests of presets that need no data to be read."""
    for key in OmegaConf.missing_keys(cfg):
        OmegaConf.update(cfg, key, ["user.txt"] if key.endswith("paths") else "user.txt")
    return cfg
