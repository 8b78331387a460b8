"""The training loop: one Hydra entry point for every data set and circuit.

    python -m monarchpc.train experiment=demo
    python -m monarchpc.train -m model=hmm,monarch2_hmm model.hidden_size=256,1024

Flow: check the config -> load data -> (init=multiply: train or reuse the dense factor
runs) -> build and initialize the circuit -> stochastic mini-batch EM (flows of
``optim.accumulate`` micro-batches of ``optim.batch_size`` rows per update, computed by the
structure's engine) -> evaluate every ``trainer.eval_every`` updates and at the end ->
records in the run directory (``metrics.jsonl``, ``run.json``, ``checkpoint.pt``) and wandb.

A run owns its directory (``run.lock``: a second run of the same name fails at once).
Interruption (Ctrl-C, SIGTERM, kill -9) loses at most the updates since the last atomic
checkpoint; ``resume=true`` continues the run in its directory to the same result as an
uninterrupted run (data order is a function of seed and epoch, EM has no other
randomness) after checking that the data is the same. A non-finite likelihood, flow or
parameter stops the run (status "diverged") before the update, keeping the last good
checkpoint. Under torchrun (or SLURM) the ranks share every micro-batch: see
monarchpc/distributed.py.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from monarchpc import checkpoint, distributed, divergence, factor_runs, progress
from monarchpc.circuits.factory import build_model
from monarchpc.circuits.sum_blocks import BlockSpec
from monarchpc.config_checks import check_config, settings_help
from monarchpc.data import Splits, build_dataset
from monarchpc.data.fingerprint import compare, data_fingerprint
from monarchpc.errors import ConfigError, DataError, DivergedError
from monarchpc.evaluate import METRICS, long_rows, metric_value
from monarchpc.initialize import initialize
from monarchpc.interrupt import StopRequest
from monarchpc.learning.em import EM
from monarchpc.learning.engines import Engine, make_engine, select_device
from monarchpc.learning.schedules import step_size
from monarchpc.paths import REPO_ROOT
from monarchpc.rundir import RunLock, check_resume, write_hydra_files
from monarchpc.tracking import NullTracker, RunLog, Tracker, run_record, write_json_atomic

log = logging.getLogger("monarchpc")
OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT), replace=True)
OmegaConf.register_new_resolver("settings_help", settings_help, replace=True)  # --help

# Keys whose change makes a checkpoint belong to a different run.
RUN_IDENTITY = ("dataset", "model", "init", "optim", "seed")


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


def run(cfg: DictConfig, splits: Splits | None = None,
        overrides: list[str] | None = None) -> dict[str, Any]:
    """Train as configured; returns the last evaluation record.

    ``splits``: the data of ``cfg.dataset`` if already loaded (factor runs of init=multiply).
    ``overrides``: the command line's, recorded in ``.hydra/overrides.yaml``.
    """
    with contextlib.ExitStack() as stack:
        run_log = stack.enter_context(RunLog())
        trainer = prepare(cfg, splits, overrides, run_log, stack)
        try:
            return trainer.fit()
        finally:
            trainer.tracker.close()


def prepare(cfg: DictConfig, splits: Splits | None, overrides: list[str] | None,
            run_log: RunLog, stack: contextlib.ExitStack) -> Trainer:
    """Everything before the first update: checks, the run directory's lock, data, factor
    runs, model, resume. Nothing is written into the run directory until all have passed."""
    composed = cfg.copy()  # as the command line composed it, for .hydra/config.yaml
    spec = check_config(cfg)
    torch.set_flush_denormal(True)  # tiny probabilities must not fall onto the CPU's slow path
    torch.manual_seed(int(cfg.seed))
    device = select_device(cfg.trainer.device)
    if device.type == "cpu" and cfg.trainer.get("cpu_threads"):
        torch.set_num_threads(int(cfg.trainer.cpu_threads))
    ddp = distributed.setup(device)  # ranks of torchrun / SLURM; one process: a no-op
    device = ddp.device
    cfg.run_dir = ddp.agree_run_dir(str(cfg.run_dir))
    run_dir = Path(cfg.run_dir)
    torch.backends.cuda.matmul.allow_tf32 = cfg.trainer.precision != "fp32"
    torch.backends.cudnn.allow_tf32 = cfg.trainer.precision != "fp32"
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
        OmegaConf.save(config, run_dir / "config.yaml")  # resolved, init.factor_runs filled in
        if overrides is not None:  # a command-line run: .hydra/ as Hydra would write it
            write_hydra_files(run_dir, composed)
    model.to(device)
    ddp.broadcast_parameters(model)
    engine = make_engine(model, cfg.trainer, device)
    log.info(f"{model.structure} {spec.kind} h={spec.hidden_size} factors="
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
        dirs = list(self.cfg.init.get("factor_runs") or [])  # finished: their cost is fixed
        costs = factor_runs.factor_costs(dirs)
        if not all((Path(d) / "run.json").is_file() for d in dirs):  # resumed without them:
            before = factor_runs.read_info(self.run_dir) or {}  # their cost as recorded
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
                        f"{self.run_dir} (continue with resume=true run_name={self.run_dir.name})")
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
        s.train_nll, s.train_units = 0.0, 0
        self.tracker.log(record)
        self.model.train()
        shown = ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k.endswith(f"_{metric}"))
        log.info(f"update {s.update}/{self.total_updates} epoch {record['epoch']:.2f}: {shown}")
        self.last = record
        return record

    def record(self, status: str) -> dict[str, Any]:
        """The run.json content now."""
        return run_record(self.cfg, self.spec, self.model, self.splits, self.device, status,
                          self.last or None, self.state.update, self.state.tokens,
                          self.state.wandb_id,
                          {**self.factors, "world_size": self.ddp.world,
                           "engine": self.engine.name, "precision": self.cfg.trainer.precision,
                           "eval_precision": self.engine.score_precision})

    def save(self, status: str) -> None:
        """Checkpoint and run.json (rank 0), at an update boundary."""
        divergence = self.ddp.max_divergence(self.model)  # collective: all ranks take part
        if not self.ddp.is_main:
            return
        self.guard(lambda: checkpoint.save(self.run_dir, self.model, asdict(self.state),
                                           self.config, em=self.em.state_dict(),
                                           data=self.fingerprint))
        write_json_atomic(self.run_dir / "run.json",
                          {**self.record(status), "rank_divergence": divergence})

    def guard(self, action: Any) -> None:
        """Run ``action``; on a divergence record status "diverged" in run.json (the last
        good checkpoint stays) and stop."""
        try:
            action()
        except DivergedError:
            if self.ddp.is_main:
                write_json_atomic(self.run_dir / "run.json", self.record("diverged"))
            raise


@hydra.main(version_base="1.3", config_path=str(REPO_ROOT / "configs"), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Console entry point; returns the final dev metric (for Hydra sweepers)."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    if cfg.run_dir is None:
        cfg.run_dir = hydra_cfg.runtime.output_dir
    try:
        record = run(cfg, overrides=list(hydra_cfg.overrides.task))
    except (ConfigError, DataError) as err:
        fail("error", err, cfg.run_dir, 2)
    except DivergedError as err:
        fail("diverged", err, cfg.run_dir, 3)
    except factor_runs.FactorRunIncomplete as err:
        fail("stopped", err, cfg.run_dir, 130)
    return next((v for k, v in record.items() if k.startswith("dev_")), None)


def fail(kind: str, err: Exception, run_dir: str, code: int) -> None:
    """One line on stderr and the exit status; the empty directory Hydra made for a rejected
    run goes (a run directory with anything in it stays as it is)."""
    print(f"monarchpc: {kind}: {err}", file=sys.stderr)
    path = Path(run_dir)
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()
    sys.exit(code)


if __name__ == "__main__":
    # Run the importable monarchpc.train.main, not this __main__ copy: launchers that
    # pickle the task function (hydra/launcher=slurm, submitit) can then pickle it by name.
    from monarchpc.train import main as importable_main

    importable_main()
