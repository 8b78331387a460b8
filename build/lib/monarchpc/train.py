"""The training loop: one Hydra entry point for every data set and circuit.

    python -m monarchpc.train experiment=demo
    python -m monarchpc.train -m model=hmm,monarch2_hmm model.hidden_size=256,1024

Flow: validate the config -> load data -> build (and initialize) the circuit -> stochastic
mini-batch EM (flows of ``optim.accumulate`` micro-batches of ``optim.batch_size`` rows per
update) -> evaluate every ``trainer.eval_every`` updates and at the end -> records in the
run directory (``metrics.jsonl``, ``run.json``, ``checkpoint.pt``) and wandb.

Interruption (Ctrl-C, SIGTERM) finishes at an update boundary and leaves a checkpoint;
``resume=true`` continues the run in its directory to the same result as an
uninterrupted run (data order is a function of seed and epoch, EM has no other randomness).

Under torchrun (or SLURM) the ranks share every micro-batch: see monarchpc/distributed.py.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from monarchpc import checkpoint, distributed
from monarchpc.circuits.factory import ConfigError, build_model, resolve_factors
from monarchpc.circuits.hmm import HMM
from monarchpc.data import DataError, Splits, build_dataset
from monarchpc.evaluate import METRICS, long_rows, metric_value, scorer
from monarchpc.factor_runs import FactorRunIncomplete, factor_costs
from monarchpc.initialize import check_init, initialize
from monarchpc.learning.em import accumulate_flows, em_step
from monarchpc.learning.forward_backward import DTYPES, fused_estep
from monarchpc.learning.schedules import SCHEDULES, step_size
from monarchpc.paths import REPO_ROOT
from monarchpc.tracking import Tracker, write_json_atomic

log = logging.getLogger("monarchpc")
OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT), replace=True)

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


class StopRequest:
    """Turns SIGINT/SIGTERM/SIGUSR2 (the warning that SLURM jobs of hydra/launcher=slurm get
    before their time limit) into a flag checked between micro-batches (a second Ctrl-C
    interrupts at once). ``deferred`` (several ranks): a signal only sets ``pending``, and
    the loop sets ``requested`` once all ranks have agreed on it at an update boundary."""

    def __init__(self, deferred: bool = False) -> None:
        self.requested = False
        self.pending = False
        self.deferred = deferred
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.pending and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.pending = True
        self.requested = self.requested or not self.deferred
        log.warning("stop requested: finishing at the next update boundary (Ctrl-C again to "
                    "abort without a checkpoint)")

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def validate(cfg: DictConfig) -> None:
    """Fail fast, before any data or GPU work, on settings that cannot work."""
    resolve_factors(cfg.model.block, int(cfg.model.hidden_size), cfg.model.get("k"),
                    cfg.model.get("factors"))
    check_init(cfg)
    o = cfg.optim
    if o.schedule not in SCHEDULES:
        raise ConfigError(f"optim.schedule={o.schedule!r} is unknown; use one of {SCHEDULES}")
    for key in ("batch_size", "accumulate", "epochs"):
        if int(o[key]) < 1:
            raise ConfigError(f"optim.{key} must be >= 1, got {o[key]}")
    if float(o.pseudocount) < 0:
        raise ConfigError(f"optim.pseudocount must be >= 0, got {o.pseudocount}")
    if cfg.trainer.precision not in DTYPES:
        raise ConfigError(f"trainer.precision={cfg.trainer.precision!r}; use one of "
                          f"{sorted(DTYPES)}")
    if cfg.trainer.engine not in ("auto", "fused", "autograd"):
        raise ConfigError("trainer.engine must be auto, fused or autograd")
    if cfg.trainer.engine == "fused" and cfg.model.structure != "hmm":
        raise ConfigError("trainer.engine=fused exists for HMMs only; use auto or autograd")
    if cfg.trainer.long_eval not in ("never", "final", "always"):
        raise ConfigError("trainer.long_eval must be never, final or always")


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA GPU is visible; use trainer.device=cpu")
    return torch.device(name)


def use_fused(t: DictConfig, model: torch.nn.Module, device: torch.device) -> bool:
    """Whether the fused HMM E-step runs: ``engine=fused``, or ``auto`` for HMMs on a GPU
    (on the CPU the plain path is faster for the small models that run there)."""
    fused = t.engine == "fused" or (t.engine == "auto" and device.type == "cuda")
    return fused and isinstance(model, HMM)


def make_estep(t: DictConfig, model: torch.nn.Module, device: torch.device) -> Any:
    """The E-step: x (N, T) -> log p(x) (N,), adding flows (as gradients) to the parameters.

    ``fused`` is the scaled forward-backward of learning/forward_backward.py in
    ``trainer.precision`` with recomputation every ``trainer.segment`` steps; ``autograd``
    is the plain PyTorch reference (see :func:`use_fused` for ``auto``).
    """
    if use_fused(t, model, device):
        return fused_estep(model, device, int(t.segment), t.precision, float(t.keep_gb),
                           t.cuda_graphs)
    return lambda x: accumulate_flows(model, x)


def check_vocab(cfg: DictConfig, splits: Splits) -> None:
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


def run_info(cfg: DictConfig, model: torch.nn.Module, splits: Splits, device: torch.device,
             status: str, final: dict[str, Any] | None, state: TrainState) -> dict[str, Any]:
    """The content of ``run.json`` (see tracking.py)."""
    m = cfg.model
    factors = resolve_factors(m.block, int(m.hidden_size), m.get("k"), m.get("factors"))
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    factor_dirs = list(cfg.init.get("factor_runs") or [])
    return {
        "name": Path(cfg.run_dir).name, "dataset": splits.info.get("name"),
        "metric": splits.metric, "structure": m.structure, "block": m.block,
        "k": len(factors) if factors else None, "factors": factors,
        "hidden_size": int(m.hidden_size), "vocab_size": splits.vocab_size,
        "madds_per_token": model.madds_per_token(),
        "num_params": sum(p.numel() for p in model.parameters()),
        "init": cfg.init.name, "factor_runs": factor_dirs, **factor_costs(factor_dirs),
        "status": status, "updates": state.update, "tokens": state.tokens,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "peak_gpu_memory_bytes": peak, "wandb_id": state.wandb_id, "data": splits.info,
        "final": final,
    }


def run(cfg: DictConfig, splits: Splits | None = None) -> dict[str, Any]:
    """Train as configured; returns the last evaluation record.

    ``splits``: the data of ``cfg.dataset`` if already loaded (factor runs of init=multiply).
    """
    validate(cfg)
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

    if (run_dir / checkpoint.FILENAME).is_file() and not cfg.resume:
        raise ConfigError(f"{run_dir} already holds a checkpoint; pass resume=true to continue "
                          f"it, or choose another run_name")
    if splits is None:
        splits = ddp.main_first(lambda: build_dataset(cfg.dataset))
    check_vocab(cfg, splits)
    log.info(splits.describe())
    generator = torch.Generator().manual_seed(int(cfg.seed))
    model = build_model(cfg.model, splits.vocab_size, generator, splits.train_rows(0),
                        vocab_sizes=splits.vocab_sizes)
    model = initialize(cfg, model, splits)

    run_dir.mkdir(parents=True, exist_ok=True)
    config = OmegaConf.to_container(cfg, resolve=True)
    state = TrainState()
    ckpt = checkpoint.load(run_dir)
    if ckpt is not None:
        changed = [k for k in RUN_IDENTITY if ckpt["config"].get(k) != config.get(k)]
        if changed:
            raise ConfigError(f"cannot resume {run_dir}: its {', '.join(changed)} config differs "
                              f"from this one; use the same settings or another run_name")
        model.load_state_dict(ckpt["model"])
        state = TrainState(**ckpt["trainer"])
        log.info(f"resuming {run_dir} at update {state.update}")
    ddp.barrier()  # every rank has checked for a checkpoint before rank 0 writes one
    if ddp.is_main:
        OmegaConf.save(config, run_dir / "config.yaml")  # resolved, init.factor_runs filled in
    model.to(device)
    ddp.broadcast_parameters(model)
    log.info(f"model: {model}\n{model.madds_per_token():,} multiply-adds per token, on {device}")

    tracker = (Tracker(run_dir, dict(cfg.logger), config, state.wandb_id) if ddp.is_main
               else distributed.NullTracker())
    tracker.truncate_after(state.update)
    state.wandb_id = tracker.wandb_id
    try:
        final = train(cfg, model, splits, device, state, tracker, run_dir, config, ddp)
    finally:
        tracker.close()
    return final


def train(cfg: DictConfig, model: torch.nn.Module, splits: Splits, device: torch.device,
          state: TrainState, tracker: Tracker | distributed.NullTracker, run_dir: Path,
          config: dict[str, Any], ddp: distributed.Dist | None = None) -> dict[str, Any]:
    """The EM loop; returns the last evaluation record."""
    o, t = cfg.optim, cfg.trainer
    ddp = ddp or distributed.Dist(device=device)
    bs, acc, epochs = int(o.batch_size), int(o.accumulate), int(o.epochs)
    micro_per_epoch = math.ceil(len(splits.train_rows(0)) / bs)
    updates_per_epoch = math.ceil(micro_per_epoch / acc)
    total_updates = updates_per_epoch * epochs
    madds = model.madds_per_token()
    metric = splits.metric
    if metric not in METRICS:
        raise DataError(f"dataset metric {metric!r} unknown")
    eval_every = int(t.eval_every)
    ckpt_every = int(t.checkpoint_every or eval_every)
    stop_after = t.get("stop_after")
    eta = step_size(o.schedule, state.update, total_updates, float(o.eta0), float(o.eta_min))
    estep = make_estep(t, model, device)
    score = (scorer(model, "fp32" if t.precision == "fp32" else "tf32")
             if use_fused(t, model, device) else model.log_likelihood)

    def evaluation(final: bool) -> dict[str, Any]:
        model.eval()
        dev = splits.dev if t.eval_max_rows is None else splits.dev[: int(t.eval_max_rows)]
        sets = {"dev": dev, "test": splits.test}
        long_wanted = t.long_eval == "always" or (t.long_eval == "final" and final)
        if long_wanted and splits.test_stream is not None:
            num_rows = int(cfg.dataset.get("long_rows", 125))
            sets["test_long"] = long_rows(splits.test_stream, num_rows)
        record: dict[str, Any] = {
            "update": state.update, "epoch": state.update / updates_per_epoch,
            "tokens": state.tokens, "train_flops": 6 * madds * state.tokens,
            "madds_per_token": madds, "step_size": eta, "wall_time": state.train_seconds}
        if state.train_units:
            record[f"train_{metric}"] = metric_value(metric, state.train_nll, state.train_units)
        record.update(ddp.evaluate(score, sets, metric, int(t.eval_batch_size), device))
        record["final"] = final
        state.train_nll, state.train_units = 0.0, 0
        tracker.log(record)
        model.train()
        shown = ", ".join(f"{k} {v:.4f}" for k, v in record.items()
                          if k.endswith(f"_{metric}"))
        log.info(f"update {state.update}/{total_updates} epoch {record['epoch']:.2f}: {shown}")
        return record

    def save(status: str, final: dict[str, Any] | None) -> None:
        divergence = ddp.max_divergence(model)  # collective: all ranks save at the same updates
        if not ddp.is_main:
            return
        checkpoint.save(run_dir, model, asdict(state), config)
        info = run_info(cfg, model, splits, device, status, final, state)
        write_json_atomic(run_dir / "run.json",
                          {**info, "world_size": ddp.world, "rank_divergence": divergence})

    last: dict[str, Any] = tracker.last_record() if state.update else {}  # resuming
    save("finished" if state.update >= total_updates else "running", last or None)
    if state.update == 0 and t.eval_at_start:
        last = evaluation(final=False)
    bar = tqdm(total=total_updates, initial=state.update, desc=run_dir.name, unit="upd",
               disable=not t.progress or not ddp.is_main, dynamic_ncols=True,
               mininterval=1.0 if sys.stderr.isatty() else 30.0)
    with StopRequest(deferred=ddp.enabled) as stop:
        while state.update < total_updates and not stop.requested:
            rows = splits.train_rows(state.epoch)
            order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(
                int(cfg.seed) * 1_000_003 + state.epoch))
            while state.micro < micro_per_epoch and not stop.requested:
                start = time.perf_counter()
                group = range(state.micro, min(state.micro + acc, micro_per_epoch))
                nll, units = 0.0, 0
                for m in group:
                    x = rows[ddp.shard(order[m * bs:(m + 1) * bs])]
                    x = x.to(device, non_blocking=True).long()
                    if len(x):  # a rank's share of a short last micro-batch can be empty
                        nll -= float(estep(x).double().sum())
                    units += x.numel()
                    if stop.requested:
                        break
                if stop.requested:  # drop the partial group: resume recomputes it
                    model.zero_grad(set_to_none=True)
                    break
                nll, units, agreed = ddp.reduce_update(model, nll, units, stop.pending)
                stop.requested = stop.requested or agreed  # all ranks end this same update
                eta = step_size(o.schedule, state.update, total_updates, float(o.eta0),
                                float(o.eta_min))
                em_step(model, eta, float(o.pseudocount))
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                state.update += 1
                state.micro = group.stop
                state.tokens += units
                state.train_seconds += time.perf_counter() - start
                state.train_nll += nll
                state.train_units += units
                bar.update(1)
                bar.set_postfix({"eta": f"{eta:.3f}",
                                 f"train_{metric}": f"{metric_value(metric, nll, units):.3f}"})
                done = state.update == total_updates
                if state.update % eval_every == 0 or done:
                    last = evaluation(final=done)
                if state.update % ckpt_every == 0 or done or state.update % eval_every == 0:
                    save("finished" if done else "running", last or None)
                if stop_after is not None and state.update >= int(stop_after):
                    stop.requested = True
            if state.micro >= micro_per_epoch:
                state.epoch += 1
                state.micro = 0
        bar.close()
        if state.update < total_updates:
            save("interrupted", last or None)
            log.warning(f"stopped at update {state.update}/{total_updates}; checkpoint in "
                        f"{run_dir} (continue with resume=true run_name={run_dir.name})")
    return last


@hydra.main(version_base="1.3", config_path=str(REPO_ROOT / "configs"), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Console entry point; returns the final dev metric (for Hydra sweepers)."""
    if cfg.run_dir is None:
        from hydra.core.hydra_config import HydraConfig

        cfg.run_dir = HydraConfig.get().runtime.output_dir
    try:
        record = run(cfg)
    except (ConfigError, DataError) as err:
        print(f"monarchpc: error: {err}", file=sys.stderr)
        sys.exit(2)
    except FactorRunIncomplete as err:
        print(f"monarchpc: stopped: {err}", file=sys.stderr)
        sys.exit(130)
    return next((v for k, v in record.items() if k.startswith("dev_")), None)


if __name__ == "__main__":
    # Run the importable monarchpc.train.main, not this __main__ copy: launchers that
    # pickle the task function (hydra/launcher=slurm, submitit) can then pickle it by name.
    from monarchpc.train import main as importable_main

    importable_main()
