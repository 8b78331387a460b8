"""Test helpers: compose the project's Hydra config as the CLI would; exact circuits."""

from __future__ import annotations

from pathlib import Path

import torch
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


class EagerGraph:
    """Stands in for a CUDA graph on the CPU: a replay runs the recorded step again."""

    def __init__(self, step: object) -> None:
        self.replay = step


def eager_capture_graph(x: torch.Tensor, warm_up, record) -> tuple:
    """monarchpc.learning.cuda_graphs.capture_graph on the CPU (monkeypatch it in): the warm-up
    runs now, the recorded step at each replay (a capture itself computes nothing)."""
    static_x = x.clone()
    warm_up(static_x)
    log_likelihood = torch.empty(x.shape[0])
    return static_x, EagerGraph(lambda: log_likelihood.copy_(record(static_x))), log_likelihood


def renormalized(model: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy whose parameters sum to one exactly along their last dimension."""
    model = model.double()
    with torch.no_grad():
        for p in model.parameters():
            p /= p.sum(-1, keepdim=True)
    return model
