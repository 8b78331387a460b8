"""The training loop: stochastic mini-batch EM on one data set and circuit, in a run directory.

Flow (:func:`train`): the run directory's lock -> data -> (init=multiply: train or reuse
the dense factor runs) -> build and initialize the circuit (:mod:`monarchpc.structures`) ->
its engine (fused E-step or autograd) -> EM updates, each from the flows of
``optim.accumulate`` micro-batches of ``optim.batch_size`` rows -> evaluate every
``trainer.eval_every`` updates and at the end -> records in the run directory
(``metrics.jsonl``, ``run.json``, ``checkpoint.pt``, and ``best.pt``: the model at the
lowest dev metric so far, ``trainer.keep_best``) and wandb.

A run owns its directory (``run.lock``: a second run of the same name fails at once).
Interruption (Ctrl-C, SIGTERM, kill -9) loses at most the updates since the last atomic
checkpoint; a run stopped by a signal ends with :class:`~monarchpc.errors.Interrupted`
after its checkpoint (the command exits 128 + the signal, e.g. 130 / 143);
``resume=true`` continues the run in its directory to the same result as an uninterrupted
run, ``best.pt`` included (data order is a function of seed and epoch, EM has no other
randomness) after checking that the data is the same. An update that would write a
non-finite or negative parameter stops the run (status "diverged") with the parameters and
the last checkpoint unchanged. Under torchrun (or SLURM) the ranks share every micro-batch:
see monarchpc/run/distributed.py. The settings are checked before this module runs
(:mod:`monarchpc.config`, through :func:`monarchpc.train.run`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from monarchpc import checkpoint, memory
from monarchpc.circuits.blocks import BlockSpec
from monarchpc.data import Splits, build_dataset
from monarchpc.data.fingerprint import compare, data_fingerprint
from monarchpc.errors import ConfigError, DataError, DivergedError, Interrupted, signal_name
from monarchpc.files import atomic_write
from monarchpc.init import factor_runs
from monarchpc.init.initialize import initialize
from monarchpc.learning.em import EM
from monarchpc.learning.engines import ENGINES, Engine, make_engine, select_device
from monarchpc.learning.precision import PRECISIONS
from monarchpc.learning.schedules import step_size
from monarchpc.run import distributed, divergence, progress
from monarchpc.run.evaluate import METRICS, long_rows, metric_value
from monarchpc.run.interrupt import StopRequest
from monarchpc.run.rundir import RunLock, check_resume, write_hydra_files
from monarchpc.run.tracking import NullTracker, RunLog, Tracker, run_record, write_json_atomic
from monarchpc.settings import Settings, boolean, choice, integer, number, text
from monarchpc.structures import build_model, structure_of

log = logging.getLogger("monarchpc")

# Keys whose change makes a checkpoint belong to a different run.
RUN_IDENTITY = ("dataset", "model", "init", "optim", "seed")

RunFn = Callable[..., dict[str, Any]]
""":func:`monarchpc.train.run`: the checked entry of a run (factor runs go through it)."""


def _device(v: Any) -> str | None:
    ok = isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None
    return None if ok else "must be auto, cpu, cuda or cuda:N"


def _keep_gb(v: Any) -> str | None:
    return None if v == "auto" else number(0.0)(v)


def _cuda_graphs(v: Any) -> str | None:
    return None if isinstance(v, bool) or v == "auto" else "must be auto, true or false"


def _run_name(v: Any) -> str | None:
    ok = isinstance(v, str) and v.strip() and ".." not in v.split("/") and not v.startswith("/")
    return None if ok else "must be a non-empty relative name (no '..', no leading '/')"


TOP: Settings = {
    "seed": (integer(0), "the seed of initialization, data order and sampling"),
    "resume": (boolean, "true continues the run of run_name from its checkpoint"),
    "run_name": (_run_name, "the run directory is outputs/<run_name>"),
    "run_dir": (text(none=True), "set by the launcher; leave it null"),
}
"""The top-level settings of a run (configs/train.yaml)."""

TRAINER: Settings = {
    "device": (_device, "where to train"),
    "precision": (choice(*PRECISIONS), "the E-step's matrix-product precision"),
    "engine": (choice(*ENGINES), "the E-step implementation"),
    "segment": (integer(1), "time steps recomputed together by the fused E-step"),
    "keep_gb": (_keep_gb, "GPU memory (GB) for kept segments; 0 recomputes all; auto: half "
                          "of the free GPU memory"),
    "cuda_graphs": (_cuda_graphs, "replay the fused E-step from CUDA graphs"),
    "products": (choice("auto", "triton", "torch"), "the fused E-step's Monarch products"),
    "eval_every": (integer(1), "updates between evaluations, each with a checkpoint"),
    "eval_at_start": (boolean, "evaluate the initial model too"),
    "eval_batch_size": (integer(1), "rows per evaluation batch"),
    "eval_max_rows": (integer(1, none=True), "dev rows evaluated; null for all"),
    "long_eval": (choice("never", "final", "always"), "when to evaluate long test rows"),
    "checkpoint_every": (integer(1, none=True), "updates between checkpoints; null for "
                         "trainer.eval_every"),
    "keep_best": (boolean, "keep best.pt, the model at the lowest dev metric so far"),
    "stop_after": (integer(1, none=True), "end this invocation after this many updates; null "
                   "to train to the end"),
    "progress": (boolean, "show a progress bar"),
    "cpu_threads": (integer(1, none=True), "torch threads on the CPU; null for torch's choice"),
}
"""The ``trainer`` group (configs/trainer/default.yaml)."""


@dataclass
class TrainState:
    """Counters of a run, saved in every checkpoint (always at an update boundary)."""

    update: int = 0  # EM updates done
    epoch: int = 0  # current epoch, 0-based
    micro: int = 0  # micro-batches of this epoch consumed by completed updates
    tokens: int = 0  # training tokens (row positions) consumed by completed updates
    train_seconds: float = 0.0  # wall time spent in training steps, over all segments
    train_nll: float = 0.0  # training NLL (nats) of the updates since the last evaluation
    train_units: int = 0  # ... and the positions it covers
    wandb_id: str | None = None
    best: dict[str, Any] | None = None  # the evaluation record of the lowest dev metric so far
    best_saved: int | None = None  # the update whose model best.pt holds (None: no best.pt)


def best_record(records: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """The record of the lowest finite ``key`` (the first of equal ones); None if none has it."""
    best = None
    for r in records:
        v = r.get(key)
        if isinstance(v, int | float) and math.isfinite(v) and (best is None or v < best[key]):
            best = r
    return best


def check_vocab(cfg: DictConfig, splits: Splits) -> None:
    """The data's vocabulary against ``model.vocab_size`` and the tokens of every split."""
    want = cfg.model.get("vocab_size")
    if want is not None and int(want) != splits.vocab_size:
        raise ConfigError(f"model.vocab_size={want} but dataset {splits.info.get('name')} has a "
                          f"vocabulary of {splits.vocab_size}; drop model.vocab_size (it follows "
                          f"the data) or pick the matching dataset")
    for name in ("train", "dev", "test"):
        rows = getattr(splits, name)
        if rows.numel() and int(rows.max()) >= splits.vocab_size:
            raise DataError(f"{name} split holds token {int(rows.max())}, outside the vocabulary "
                            f"of {splits.vocab_size}; the data cache is stale or corrupt: delete "
                            f"it under data/ and rerun")


def check_model_memory(cfg: DictConfig, spec: BlockSpec, device: torch.device,
                       vocab_size: int | None = None, num_vars: int | None = None) -> None:
    """Refuse (one ConfigError line with the device's free memory) a model whose parameters,
    three times over for training (parameters, flows, the E-step's working set), cannot fit:
    checked from the block spec before the data is read (the vocabulary as configured, else
    a lower bound of 1) and again with the data's sizes before the model is built."""
    if vocab_size is None:  # before the data: as configured, else unknown (1: a lower bound)
        vocab_size = int(cfg.model.get("vocab_size") or cfg.dataset.get("vocab_size") or 1)
    vocab = f", vocabulary {vocab_size}" if vocab_size > 1 else ""
    if num_vars is None:
        num_vars = 3 * int(cfg.dataset.get("patch_size") or 1) ** 2
    need = 3 * 4 * structure_of(cfg.model.structure).parameters(spec, vocab_size, num_vars)
    memory.check_fits(f"training a {cfg.model.structure} of model.hidden_size="
                      f"{spec.hidden_size} ({spec.kind} blocks{vocab}; its parameters, "
                      f"flows and E-step)", need, device,
                      "lower model.hidden_size (or use Monarch blocks, model=monarch2_hmm), or "
                      "train on a device with more free memory", ConfigError)


def train(cfg: DictConfig, run: RunFn, splits: Splits | None = None,
          overrides: list[str] | None = None) -> dict[str, Any]:
    """Train as configured (a checked config); returns the last evaluation record.

    ``run``: the checked entry that trains init=multiply's factor runs
    (:func:`monarchpc.train.run`). ``splits``: the data of ``cfg.dataset`` if already
    loaded (factor runs). ``overrides``: the command line's, recorded in
    ``.hydra/overrides.yaml``.
    """
    with contextlib.ExitStack() as stack:
        run_log = stack.enter_context(RunLog())
        trainer = prepare(cfg, run, splits, overrides, run_log, stack)
        try:
            return trainer.fit()
        finally:
            trainer.tracker.close()


def prepare(cfg: DictConfig, run: RunFn, splits: Splits | None, overrides: list[str] | None,
            run_log: RunLog, stack: contextlib.ExitStack) -> Trainer:
    """Everything before the first update: the run directory's lock, data, factor runs,
    model, resume. Nothing is written into the run directory until all have passed."""
    composed = cfg.copy()  # as the command line composed it, for .hydra/config.yaml
    spec = BlockSpec.from_config(cfg.model)
    structure = structure_of(cfg.model.structure)
    torch.set_flush_denormal(True)  # tiny probabilities must not fall onto the CPU's slow path
    torch.manual_seed(int(cfg.seed))
    device = select_device(cfg.trainer.device)
    check_model_memory(cfg, spec, device)  # before the run directory or data is touched
    if device.type == "cpu" and cfg.trainer.get("cpu_threads"):
        torch.set_num_threads(int(cfg.trainer.cpu_threads))
    ddp = distributed.setup(device)  # ranks of torchrun / SLURM; one process: a no-op
    device = ddp.device
    cfg.run_dir = ddp.agree_run_dir(str(cfg.run_dir))
    run_dir = Path(cfg.run_dir)
    if ddp.is_main:  # one run per directory; held until the run ends
        stack.enter_context(RunLock(run_dir))
    resuming = check_resume(run_dir, bool(cfg.resume))  # every rank sees the same files

    if splits is None:
        splits = ddp.main_first(lambda: build_dataset(cfg.dataset))
    check_vocab(cfg, splits)
    fingerprint = data_fingerprint(splits)
    log.info(splits.describe())
    ckpt = checkpoint.load(run_dir) if resuming else None
    if cfg.init.name == "multiply" and ckpt is not None:  # the model is in the checkpoint:
        cfg.init.factor_runs = ckpt["config"]["init"]["factor_runs"]  # its factors not needed
    elif cfg.init.name == "multiply":  # pipeline step: the dense factor runs, trained first
        cfg.init.factor_runs = [str(d) for d in factor_runs.factor_runs(cfg, run, splits)]
    check_model_memory(cfg, spec, device, splits.vocab_size, splits.train.shape[-1])
    generator = torch.Generator().manual_seed(int(cfg.seed))
    model = build_model(cfg.model, splits.vocab_size, generator, splits.train_rows(0),
                        vocab_sizes=splits.vocab_sizes)
    if ckpt is None:
        model = initialize(cfg, model, splits.vocab_size)

    config = OmegaConf.to_container(cfg, resolve=True)
    o = cfg.optim
    state, em = TrainState(), EM(o.get("update", "probs"), float(o.pseudocount),
                                 float(o.get("floor", 0.0)))
    if ckpt is not None:
        changed = [k for k in RUN_IDENTITY if ckpt["config"].get(k) != config.get(k)]
        if changed:
            raise ConfigError(f"cannot resume {run_dir}: its {', '.join(changed)} config differs "
                              f"from this one; use the same settings or another run_name")
        if ckpt.get("data") is None:
            log.warning(f"{run_dir}'s checkpoint records no data fingerprint: the data is "
                        f"not checked")
        else:
            compare(ckpt["data"], fingerprint)
        model.load_state_dict(ckpt["model"])
        state = TrainState(**ckpt["trainer"])
        em.load_state_dict(ckpt.get("em") or {}, device)
        log.info(f"resuming {run_dir} at update {state.update}")
    ddp.barrier()  # every rank has checked for a checkpoint before rank 0 writes one
    if ddp.is_main:  # the run is accepted: its config and log
        run_log.open(run_dir)
        text = OmegaConf.to_yaml(OmegaConf.create(config))  # resolved, factor_runs filled in
        atomic_write(run_dir / "config.yaml", lambda f: f.write(text.encode()))  # not via links
        if overrides is not None:  # a command-line run: .hydra/ as Hydra would write it
            write_hydra_files(run_dir, composed)
    model.to(device)
    ddp.broadcast_parameters(model)
    engine = make_engine(model, cfg.trainer, device, structure.fused,
                         structure.score_precision(cfg.trainer.precision))
    log.info(f"{structure.name} {spec.kind} h={spec.hidden_size} factors="
             f"{'x'.join(map(str, spec.factors))}: {model.madds_per_token():,} multiply-adds "
             f"per token, {sum(p.numel() for p in model.parameters()):,} parameters, "
             f"{engine.name} engine in {cfg.trainer.precision} on {device}")

    tracker = (Tracker(run_dir, dict(cfg.logger), config, state.wandb_id) if ddp.is_main
               else NullTracker())
    tracker.truncate_after(state.update)
    state.wandb_id = tracker.wandb_id
    return Trainer(cfg, spec, model, splits, device, state, tracker, config, ddp, em, engine,
                   fingerprint)


@dataclass
class Trainer:
    """A run in progress: the EM loop (:meth:`fit`) and what it records."""

    cfg: DictConfig
    spec: BlockSpec
    model: torch.nn.Module
    splits: Splits
    device: torch.device
    state: TrainState
    tracker: Tracker | NullTracker
    config: dict[str, Any]
    ddp: distributed.Dist
    em: EM
    engine: Engine
    fingerprint: dict[str, Any]

    def __post_init__(self) -> None:
        o = self.cfg.optim
        self.run_dir = Path(self.cfg.run_dir)
        self.metric = self.splits.metric
        if self.metric not in METRICS:
            raise DataError(f"dataset metric {self.metric!r} unknown")
        self.micro_per_epoch = math.ceil(len(self.splits.train_rows(0)) / int(o.batch_size))
        self.updates_per_epoch = math.ceil(self.micro_per_epoch / int(o.accumulate))
        self.total_updates = self.updates_per_epoch * int(o.epochs)
        self.last: dict[str, Any] = self.tracker.last_record() if self.state.update else {}
        if self.state.update and self.state.best is None:  # a checkpoint from before best.pt
            self.state.best = best_record(getattr(self.tracker, "records", []),
                                          f"dev_{self.metric}")
        dirs = list(self.cfg.init.get("factor_runs") or [])  # finished: their cost is fixed
        costs = factor_runs.factor_costs(dirs)
        if not all((Path(d) / "run.json").is_file() for d in dirs):  # resumed without them:
            try:  # their cost as recorded
                before = factor_runs.read_info(self.run_dir) or {}
            except DataError:  # a damaged run.json of this run: rewritten at the next save
                before = {}
            costs = {k: before.get(k, v) for k, v in costs.items()}
        self.factors = {"factor_runs": dirs, **costs}

    def step_size(self) -> float:
        o = self.cfg.optim
        return step_size(o.schedule, self.state.update, self.total_updates, float(o.eta0),
                         float(o.eta_min))

    def fit(self) -> dict[str, Any]:
        """Run EM updates until the last epoch ends or a stop is requested; returns the
        last evaluation record."""
        s, t = self.state, self.cfg.trainer
        eval_every = int(t.eval_every)
        ckpt_every = int(t.checkpoint_every or eval_every)
        self.save("finished" if s.update >= self.total_updates else "running")
        if s.update == 0 and t.eval_at_start:
            self.evaluate(final=False)
            self.save("running")  # the initial model may be the best one (best.pt)
        bar = progress.bar(self.total_updates, self.run_dir.name, s.update, "upd",
                           enabled=bool(t.progress) and self.ddp.is_main)
        with StopRequest(deferred=self.ddp.enabled) as stop, progress.clean_logging():
            while s.update < self.total_updates and not stop.requested:
                rows = self.splits.train_rows(s.epoch)
                order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(
                    int(self.cfg.seed) * 1_000_003 + s.epoch))
                while s.micro < self.micro_per_epoch and not stop.requested:
                    if not self.update(rows, order, stop):
                        break
                    bar.update(1)
                    shown = metric_value(self.metric, s.train_nll, s.train_units)
                    bar.set_postfix({"eta": f"{self.step_size():.3f}",
                                     f"train_{self.metric}": f"{shown:.3f}"})
                    done = s.update == self.total_updates
                    if s.update % eval_every == 0 or done:
                        self.evaluate(final=done)
                    if s.update % ckpt_every == 0 or s.update % eval_every == 0 or done:
                        self.save("finished" if done else "running")
                    if t.stop_after is not None and s.update >= int(t.stop_after):
                        stop.requested = True
                if s.micro >= self.micro_per_epoch:
                    s.epoch, s.micro = s.epoch + 1, 0
            bar.close()
        if s.update < self.total_updates:
            self.save("interrupted")
            log.warning(f"stopped at update {s.update}/{self.total_updates}; checkpoint in "
                        f"{self.run_dir}")
            if stop.signum is not None:  # a signal, not trainer.stop_after: not finished
                raise Interrupted(f"stopped by {signal_name(stop.signum)} at update "
                                  f"{s.update}/{self.total_updates}; the checkpoint in "
                                  f"{self.run_dir} keeps it: continue with resume=true "
                                  f"run_name={self.run_dir.name}", stop.signum)
        return self.last

    def update(self, rows: torch.Tensor, order: torch.Tensor, stop: StopRequest) -> bool:
        """One EM update from the next ``optim.accumulate`` micro-batches of ``order``;
        False (nothing changed) when a stop request came first."""
        s, o = self.state, self.cfg.optim
        bs, start = int(o.batch_size), time.perf_counter()
        group = range(s.micro, min(s.micro + int(o.accumulate), self.micro_per_epoch))
        nll, units = 0.0, 0
        for m in group:
            x = rows[self.ddp.shard(order[m * bs:(m + 1) * bs])]
            x = x.to(self.device, non_blocking=True).long()
            if len(x):  # a rank's share of a short last micro-batch can be empty
                nll -= float(self.engine.estep(x).double().sum())
            units += x.numel()
            if stop.requested:  # drop the partial group: resume recomputes it
                self.model.zero_grad(set_to_none=True)
                return False
        nll, units, agreed = self.ddp.reduce_update(self.model, nll, units, stop.pending)
        stop.requested = stop.requested or agreed  # all ranks end this same update
        if agreed and stop.signum is None:  # another rank got the signal
            stop.signum = int(signal.SIGTERM)
        fix = divergence.hint(self.cfg.optim, self.cfg.trainer)
        # the same flows on all ranks: all agree on a divergence, and all keep good parameters
        self.guard(lambda: divergence.check(self.model, -nll, s.update + 1, fix))
        self.guard(lambda: divergence.em_step(self.em, self.model, self.step_size(),
                                              s.update + 1, fix))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        s.update, s.micro, s.tokens = s.update + 1, group.stop, s.tokens + units
        s.train_seconds += time.perf_counter() - start
        s.train_nll, s.train_units = s.train_nll + nll, s.train_units + units
        return True

    def evaluate(self, final: bool) -> dict[str, Any]:
        """Score dev and test (and the long test rows if asked) and log the record."""
        s, t, metric = self.state, self.cfg.trainer, self.metric
        self.model.eval()
        dev = self.splits.dev if t.eval_max_rows is None else self.splits.dev[:int(t.eval_max_rows)]
        sets = {"dev": dev, "test": self.splits.test}
        if (t.long_eval == "always" or (t.long_eval == "final" and final)) and \
                self.splits.test_stream is not None:
            sets["test_long"] = long_rows(self.splits.test_stream,
                                          int(self.cfg.dataset.get("long_rows", 125)))
        madds = self.model.madds_per_token()
        record: dict[str, Any] = {
            "update": s.update, "epoch": s.update / self.updates_per_epoch, "tokens": s.tokens,
            "train_flops": 6 * madds * s.tokens, "madds_per_token": madds,
            "step_size": self.step_size(), "wall_time": s.train_seconds}
        if s.train_units:
            record[f"train_{metric}"] = metric_value(metric, s.train_nll, s.train_units)
        record.update(self.ddp.evaluate(self.engine.score, sets, metric,
                                        int(t.eval_batch_size), self.device, bool(t.progress)))
        record["final"] = final
        s.best = best_record([r for r in (s.best, record) if r is not None], f"dev_{metric}")
        s.train_nll, s.train_units = 0.0, 0
        self.tracker.log(record)
        self.model.train()
        shown = ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k.endswith(f"_{metric}"))
        log.info(f"update {s.update}/{self.total_updates} epoch {record['epoch']:.2f}: {shown}")
        self.last = record
        return record

    def record(self, status: str) -> dict[str, Any]:
        """The run.json content now: ``final`` is the last evaluation, ``best`` the one of
        the lowest dev metric, with ``"checkpoint": "best.pt"`` where that file holds its
        model."""
        s = self.state
        best = None if s.best is None else {
            **s.best, "checkpoint": checkpoint.BEST if s.best_saved == s.best["update"] else None}
        return run_record(self.cfg, self.spec, self.model, self.splits, self.device, status,
                          self.last or None, s.update, s.tokens, s.wandb_id,
                          {**self.factors, "world_size": self.ddp.world,
                           "engine": self.engine.name, "precision": self.cfg.trainer.precision,
                           "eval_precision": self.engine.score_precision, "best": best})

    def save(self, status: str) -> None:
        """Checkpoint, best.pt if due and run.json (rank 0), at an update boundary."""
        divergence = self.ddp.max_divergence(self.model)  # collective: all ranks take part
        if not self.ddp.is_main:
            return
        self.guard(lambda: checkpoint.save(self.run_dir, self.model, asdict(self.state),
                                           self.config, em=self.em.state_dict(),
                                           data=self.fingerprint))
        self.save_best()
        write_json_atomic(self.run_dir / "run.json",
                          {**self.record(status), "rank_divergence": divergence})

    def save_best(self) -> None:
        """Write best.pt when this update's evaluation is the best so far and best.pt does
        not hold it yet (``trainer.keep_best``).

        Written after the checkpoint of the same update, never before: a crash in between
        leaves a checkpoint at the best update whose ``best_saved`` is older (or best.pt
        missing), and the resumed run's first :meth:`save` writes best.pt from it (the same
        model). So best.pt never holds a model the checkpoint has not reached, and a
        resumed run ends with the best.pt of an uninterrupted one."""
        s = self.state
        if not self.cfg.trainer.get("keep_best") or s.best is None \
                or s.best["update"] != s.update:
            return
        if s.best_saved == s.update and (self.run_dir / checkpoint.BEST).is_file():
            return
        self.guard(lambda: checkpoint.save(self.run_dir, self.model, asdict(s), self.config,
                                           filename=checkpoint.BEST, best=dict(s.best),
                                           data=self.fingerprint))
        s.best_saved = s.update

    def guard(self, action: Any) -> None:
        """Run ``action``; on a divergence record status "diverged" in run.json (the last
        good checkpoint stays) and stop."""
        try:
            action()
        except DivergedError:
            if self.ddp.is_main:
                write_json_atomic(self.run_dir / "run.json", self.record("diverged"))
            raise


