"""The factor runs of ``init=multiply``: dense HMMs trained by the same loop, cached.

Factor d (size h_d, d = 0..k-1) is an ordinary training run of a dense HMM, derived from
the Monarch run's config: same dataset, trainer and logger; ``model`` = dense HMM of size
h_d; ``optim`` = the run's optim with the non-null keys of ``init.optim`` on top (the
paper's text8 factors: batch 1024, 20 epochs, same schedule); ``init`` = random (with the
run's ``init.space_token``);
``seed`` = ``init.seed + d`` (so equal sizes, e.g. 16 x 16, give two different HMMs and
not the same one twice).

Each factor run lives in ``init.cache_dir/<name>`` where the name ends in a hash of its
identity (resolved dataset config, model, optim, seed and trainer precision). A run whose
``run.json`` says finished is reused; an interrupted one is resumed; a changed identity
(another size, epochs, data, seed...) is a new directory. A file lock per directory keeps
parallel sweep jobs from training the same factor twice. ``init.parallel`` trains the
unfinished factors side by side, one child process each (``python -m monarchpc.train_factor
--config <factor dir>/factor_config.yaml``, logging to ``factor.log`` there), with the same
results as one after another.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from monarchpc import checkpoint
from monarchpc.circuits.blocks import BlockSpec, factorize
from monarchpc.circuits.hmm import HMM
from monarchpc.data import Splits
from monarchpc.errors import ConfigError, DataError, DivergedError, Interrupted, signal_name
from monarchpc.files import atomic_write, open_append, open_fd, read_json_object
from monarchpc.structures import build_model

log = logging.getLogger("monarchpc")

DATASET_LOCATION_KEYS = ("cache_dir", "download")
"""Dataset keys that say where data is cached or whether to fetch it, not what it is."""


class FactorRunIncomplete(Interrupted):
    """A factor run stopped before finishing (Ctrl-C, SIGTERM); rerunning the same command
    resumes it. Exit status 128 + the signal, as any stopped run."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message, signum)


def factor_sizes(cfg: DictConfig) -> list[int]:
    """The dense factor sizes h_0..h_{k-1} of ``init=multiply`` for the model of ``cfg``.

    ``init.factors`` if given; else the model's Monarch factors; for a dense model, its two
    near-equal factors (the product is then materialized as a dense matrix).
    """
    spec = BlockSpec.from_config(cfg.model)
    hidden = spec.hidden_size
    model_factors = list(spec.factors) if spec.kind == "monarch" else None
    given = cfg.init.get("factors")
    if given is None and model_factors is not None:
        return model_factors
    if given is None:
        try:
            return factorize(hidden, 2)
        except ValueError as err:
            raise ConfigError(f"init=multiply: {err}; or set init.factors") from None
    sizes = [int(b) for b in given]
    if model_factors is not None and sizes != model_factors:
        raise ConfigError(f"init.factors={sizes} must equal the Monarch factors "
                          f"{model_factors} of the model (set model.factors={sizes}, or "
                          f"init.factors=null to use the model's)")
    if math.prod(sizes) != hidden:
        raise ConfigError(f"init.factors={sizes} multiply to {math.prod(sizes)}, not "
                          f"model.hidden_size={hidden}")
    return sizes


def factor_config(cfg: DictConfig, size: int, index: int) -> dict[str, Any]:
    """The resolved config (a plain dict) of factor ``index`` of size ``size``; no run dir."""
    parent = OmegaConf.to_container(cfg, resolve=True)
    init = parent["init"]
    c = copy.deepcopy(parent)
    c["model"] = {"name": "hmm", "structure": "hmm", "block": "dense", "hidden_size": int(size),
                  "k": None, "factors": None,
                  "perturbation": parent["model"].get("perturbation", 8.0),
                  "vocab_size": parent["model"].get("vocab_size")}
    c["init"] = {"name": "random", "space_token": init.get("space_token")}
    c["optim"] = {**parent["optim"],
                  **{k: v for k, v in (init.get("optim") or {}).items() if v is not None}}
    c["trainer"] = {**parent["trainer"],
                    **{k: v for k, v in (init.get("trainer") or {}).items() if v is not None},
                    "stop_after": None,
                    "keep_best": False}  # multiplication takes a factor's last model
    c["seed"] = int(init.get("seed", parent["seed"])) + index
    return c


def identity(config: dict[str, Any]) -> dict[str, Any]:
    """What makes two factor runs the same run (the cache key)."""
    dataset = {k: v for k, v in config["dataset"].items() if k not in DATASET_LOCATION_KEYS}
    key = {"dataset": dataset, "model": config["model"], "optim": config["optim"],
           "seed": config["seed"], "precision": config["trainer"]["precision"]}
    if config["init"].get("space_token") is not None:  # (absent: the keys of earlier caches)
        key["space_token"] = config["init"]["space_token"]
    return key


def run_name(config: dict[str, Any]) -> str:
    """``<dataset>-hmm-h<size>-seed<seed>-<12 hex digits of the identity's sha256>``."""
    key = json.dumps(identity(config), sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return (f"{config['dataset']['name']}-hmm-h{config['model']['hidden_size']}"
            f"-seed{config['seed']}-{digest}")


def read_info(run_dir: Path) -> dict[str, Any] | None:
    """The run.json of ``run_dir``, or None; one DataError line if it is not a JSON object."""
    return read_json_object(run_dir / "run.json",
                            f"the factor run in {run_dir} is damaged: delete that directory "
                            f"to train it again (or restore its run.json)")


def is_finished(run_dir: Path) -> bool:
    info = read_info(run_dir)
    return bool(info and info.get("status") == "finished") and \
        (run_dir / checkpoint.FILENAME).is_file()


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if missing) for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = open_fd(path, os.O_RDWR | os.O_CREAT)  # never through a planted link
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


Train = Callable[[Any, Splits | None], Any]
"""The training loop, :func:`monarchpc.train.run` (passed in: this module runs before it)."""


def train_factor(config: dict[str, Any], cache_dir: Path, train: Train,
                 splits: Splits | None = None) -> Path:
    """The run directory of the factor run ``config``: reused when finished, else trained
    (or resumed) now with ``train``."""
    name = run_name(config)
    run_dir = cache_dir / name
    with locked(cache_dir / f".{name}.lock"):
        if is_finished(run_dir):
            log.info(f"factor run {run_dir}: finished, reused")
            return run_dir
        resume = (run_dir / checkpoint.FILENAME).is_file()
        log.info(f"factor run {run_dir}: {'resuming' if resume else 'training'} a dense HMM "
                 f"of size {config['model']['hidden_size']}")
        cfg = OmegaConf.create({**config, "run_dir": str(run_dir), "run_name": name,
                                "resume": resume})
        try:
            train(cfg, splits)
        except Interrupted as err:  # not resume=true run_name=<factor>: the same command
            raise FactorRunIncomplete(
                f"factor run {run_dir} stopped by {signal_name(err.signum)} before finishing "
                f"(its checkpoint is kept); run the same command again to resume it",
                err.signum) from None
        if not is_finished(run_dir):
            raise FactorRunIncomplete(
                f"factor run {run_dir} stopped before finishing; run the same command again "
                f"to resume it")
    return run_dir


def load_factor(run_dir: Path, vocab_size: int) -> HMM:
    """The trained dense HMM of a finished factor run (on the CPU)."""
    ckpt = checkpoint.load(run_dir)
    if ckpt is None:
        raise ConfigError(f"{run_dir} holds no checkpoint; it is not a finished factor run")
    model = build_model(ckpt["config"]["model"], vocab_size)
    model.load_state_dict(ckpt["model"])
    if not isinstance(model, HMM):
        raise ConfigError(f"{run_dir} does not hold an HMM")
    return model


def factor_runs(cfg: DictConfig, train: Train, splits: Splits | None = None) -> list[Path]:
    """The factor run directories of ``cfg`` (``init=multiply``), training what is missing
    with ``train``: the pipeline step before a run initialized by multiplication.

    Directories given in ``init.factor_runs`` are used as they are (they must be finished).
    """
    given = cfg.init.get("factor_runs")
    if given:
        dirs = [Path(d) for d in given]
        unfinished = [str(d) for d in dirs if not is_finished(d)]
        if unfinished:
            raise ConfigError(f"init.factor_runs lists runs that are not finished: "
                              f"{', '.join(unfinished)}")
        return dirs
    cache_dir = Path(cfg.init.cache_dir)
    configs = [factor_config(cfg, size, d) for d, size in enumerate(factor_sizes(cfg))]
    # one process only: distributed.setup has put the ranks' WORLD_SIZE into the environment
    if cfg.init.get("parallel") and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        train_parallel([c for c in configs if not is_finished(cache_dir / run_name(c))],
                       cache_dir)
    return [train_factor(c, cache_dir, train, splits) for c in configs]


ERRORS = {e.__name__: e for e in (ConfigError, DataError, DivergedError, FactorRunIncomplete)}
"""The errors a child reports as ``monarchpc: <name>: <message>`` and the parent re-raises."""


def train_parallel(configs: list[dict[str, Any]], cache_dir: Path) -> None:
    """Train the factor runs ``configs`` side by side, one child process each (see
    :func:`main`); a signal here is forwarded to the children as SIGINT (they stop at an
    update boundary with a checkpoint) and ends in :class:`FactorRunIncomplete`."""
    root = str(Path(__file__).resolve().parent.parent)  # the children import this package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (
        root, os.environ.get("PYTHONPATH"))))}
    children: dict[Path, tuple[subprocess.Popen[bytes], float]] = {}
    stopped: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        stopped.append(signum)
        for child, _ in children.values():
            with suppress(ProcessLookupError):
                child.send_signal(signal.SIGINT)

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with suppress(ValueError):  # not the main thread: leave signals alone
            previous[sig] = signal.signal(sig, forward)
    failed: list[tuple[Path, int]] = []
    try:
        for config in configs:
            if stopped:
                break
            run_dir = cache_dir / run_name(config)
            run_dir.mkdir(parents=True, exist_ok=True)
            text = OmegaConf.to_yaml(OmegaConf.create(config))
            atomic_write(run_dir / "factor_config.yaml", lambda f, t=text: f.write(t.encode()))
            with open_append(run_dir / "factor.log") as out:  # own session: Ctrl-C is ours
                child = subprocess.Popen([sys.executable, "-m", "monarchpc.train_factor",
                                          "--config", str(run_dir / "factor_config.yaml"),
                                          "--parent", str(os.getpid())],
                                         stdout=out, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
            children[run_dir] = child, time.monotonic()
            log.info(f"factor run {run_dir}: started in process {child.pid}")
        waiting = dict(children)
        while waiting:
            time.sleep(0.05)
            for run_dir, (child, start) in list(waiting.items()):
                if child.poll() is not None:
                    del waiting[run_dir]
                    log.info(f"factor run {run_dir}: process ended (exit status "
                             f"{child.returncode}) after {time.monotonic() - start:.1f} s")
                    failed += [(run_dir, child.returncode)] if child.returncode else []
    finally:
        for child, _ in children.values():  # an exception here: no child outlives us
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
                child.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopped or failed:
        raise child_error(failed, stopped)


def child_error(failed: list[tuple[Path, int]], stopped: list[int]) -> Exception:
    """One error for the failed children, of the kind the first one reported (or
    :class:`FactorRunIncomplete` after a stop), naming their logs."""
    kinds, lines = [], []
    for run_dir, code in failed:
        if stopped and code == 128 + signal.SIGINT:  # stopped as asked (SIGINT forwarded)
            continue
        path = run_dir / "factor.log"
        tail = path.read_text(errors="replace").splitlines()[-15:]
        log.error(f"factor run {run_dir}: exit status {code}; {path} ends:\n" + "\n".join(tail))
        said = [m for m in map(re.compile(r"monarchpc: (\w+): (.*)").match, tail) if m]
        kinds.append(ERRORS.get(said[-1][1], RuntimeError) if said else RuntimeError)
        lines.append(f"factor run {run_dir} failed: "
                     f"{said[-1][2] if said else f'exit status {code}'} (log: {path})")
    if stopped:
        return FactorRunIncomplete(f"factor runs stopped by {signal_name(stopped[0])} before "
                                   f"finishing (their checkpoints are kept); run the same "
                                   f"command again to resume them", stopped[0])
    return kinds[0]("; ".join(lines))


def factor_costs(dirs: list[str] | list[Path]) -> dict[str, float]:
    """Training cost of the factor runs: summed ``train_flops`` and ``wall_time`` (seconds)
    of their final records (what multiplication cost before the Monarch run started)."""
    flops, seconds = 0.0, 0.0
    for d in dirs:
        final = (read_info(Path(d)) or {}).get("final") or {}
        flops += float(final.get("train_flops", 0.0))
        seconds += float(final.get("wall_time", 0.0))
    return {"factor_train_flops": flops, "factor_wall_time": seconds}
