"""Data parallelism over ``torch.distributed``: every rank takes a share of every micro-batch.

    torchrun --standalone --nproc_per_node=4 -m monarchpc.train experiment=text8_monarch2
    srun --ntasks-per-node=4 python -m monarchpc.train ...     (or hydra/launcher=slurm)

Ranks are found from torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT),
else from a submitit job or a SLURM ``srun`` step with several tasks; with none of them
the run is a single process and every function here is a no-op. Backend: NCCL on CUDA
(one GPU per rank, ``cuda:LOCAL_RANK``; NVLink multicast stays off: NCCL_NVLS_ENABLE=0
unless set), gloo on the CPU.

Why results do not depend on the number of ranks: all ranks draw the same seeded
permutation of the epoch's rows and ``optim.batch_size`` is the *global* micro-batch;
rank r takes the r-th contiguous share of it (:meth:`Dist.shard`). Before each EM step
``param.grad`` is summed over ranks (:meth:`Dist.reduce_update`); flows are theta * grad
with theta equal on all ranks and are linear in the rows, so every rank then holds the
flows of the whole micro-batches and takes the same EM step. So 2 ranks equal 1 rank up
to float summation order, and a checkpoint resumes under any world size. Evaluation
shards rows the same way and sums NLL and unit counts. Rank 0 alone writes records and
checkpoints; a stop request (a signal to any rank) is agreed across ranks once per
update, so all stop together.
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from monarchpc.errors import ConfigError
from monarchpc.run.evaluate import Score, evaluate

log = logging.getLogger("monarchpc")
T = TypeVar("T")

FLAT_LIMIT = 1 << 24
"""Gradients below this many elements are all-reduced as one flat buffer; larger ones in
place (no copy of a multi-GB Monarch layer)."""


@dataclass(frozen=True)
class Dist:
    """This process's place among the ranks; ``world == 1`` means no process group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, rows: Tensor) -> Tensor:
        """This rank's contiguous share of ``rows`` (N, ...) -> (N_r, ...), N_r in
        {N // world, N // world + 1}; the shares of ranks 0..world-1 concatenate to ``rows``
        (a share may be empty)."""
        return rows.tensor_split(self.world)[self.rank] if self.enabled else rows

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` (any picklable object) on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, *values: float) -> tuple[float, ...]:
        """Every value summed over ranks (float64; integers stay exact below 2^53)."""
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return tuple(t.tolist())

    def reduce_update(self, model: nn.Module, nll: float, units: int, stop: bool
                      ) -> tuple[float, int, bool]:
        """Sum the flows in every ``param.grad`` over ranks (in place; a missing grad counts
        as zeros), and this update's training NLL and units; ``stop`` becomes True on every
        rank if it is True on any. Returns ``(nll, units, stop)`` of all ranks together."""
        if not self.enabled:
            return nll, units, stop
        grads = []
        for p in model.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        stats = torch.tensor([nll, units, float(stop)], dtype=torch.float64, device=self.device)
        works = [dist.all_reduce(stats, async_op=True)]
        small: dict[torch.dtype, list[Tensor]] = {}
        for g in grads:
            if g.numel() >= FLAT_LIMIT:
                works.append(dist.all_reduce(g, async_op=True))
            else:
                small.setdefault(g.dtype, []).append(g)
        flats = [(group, torch.cat([g.reshape(-1) for g in group])) for group in small.values()]
        works += [dist.all_reduce(flat, async_op=True) for _, flat in flats]
        for w in works:
            w.wait()
        for group, flat in flats:
            for g, part in zip(group, flat.split([g.numel() for g in group]), strict=True):
                g.copy_(part.view_as(g))
        nll_all, units_all, stops = stats.tolist()
        return nll_all, round(units_all), stops > 0

    def evaluate(self, score: Score, sets: Mapping[str, Tensor], metric: str,
                 batch_size: int, device: torch.device, show: bool = False
                 ) -> dict[str, float]:
        """:func:`monarchpc.run.evaluate.evaluate` with the rows of every split shared out
        across ranks and the NLL and unit counts summed: ``{f"{name}_{metric}": value}``
        (``show``: a progress bar on rank 0)."""
        return evaluate(score, sets, metric, batch_size, device, self.shard, self.sum,
                        show and self.is_main)

    @torch.no_grad()
    def broadcast_parameters(self, model: nn.Module) -> None:
        """Overwrite every rank's parameters and buffers with rank 0's."""
        if self.enabled:
            for t in [*model.parameters(), *model.buffers()]:
                dist.broadcast(t.data, src=0)

    @torch.no_grad()
    def max_divergence(self, model: nn.Module) -> float:
        """Largest |theta_rank - theta_rank0| over all parameters and ranks (0.0 when they
        are identical, as they must be after every EM step)."""
        if not self.enabled:
            return 0.0
        worst = torch.zeros((), dtype=torch.float64, device=self.device)
        for p in model.parameters():
            ref = p.detach().clone()
            dist.broadcast(ref, src=0)
            worst = torch.maximum(worst, (p.detach() - ref).abs().max().double())
            del ref
        dist.all_reduce(worst, op=dist.ReduceOp.MAX)
        return float(worst)

    def main_first(self, fn: Callable[[], T]) -> T:
        """``fn()`` on rank 0, then on the other ranks (downloads and caches are written
        once); an exception on rank 0 is raised on every rank."""
        if not self.enabled:
            return fn()
        if self.is_main:
            try:
                out = fn()
            except Exception as err:
                self.broadcast(_portable(err))
                raise
            self.broadcast(None)
            return out
        err = self.broadcast(None)
        if err is not None:
            raise err
        return fn()

    def agree_run_dir(self, run_dir: str) -> str:
        """Rank 0's run directory. Each rank composed its own Hydra config, so a default
        ``run_name`` holding ``${now:...}`` can differ by a second between ranks: the
        others take rank 0's and remove the directory Hydra made for them if it holds
        nothing but Hydra's files (``.hydra/``, ``*.log``)."""
        chosen = self.broadcast(run_dir)
        if chosen != run_dir:
            stray = Path(run_dir)
            if stray.is_dir() and all(p.name == ".hydra" or p.suffix == ".log"
                                      for p in stray.iterdir()):
                shutil.rmtree(stray, ignore_errors=True)
        return chosen


def _portable(err: Exception) -> Exception:
    """``err`` if it pickles, else a RuntimeError with its message."""
    import pickle

    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"rank 0 failed: {err!r}")


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``"gpu[003-005,9],cpu1"`` -> ``"gpu003"``."""
    m = re.match(r"([^,\[]+)(?:\[([^,\]\-]+))?", nodelist.strip())
    if m is None:
        raise ValueError(f"cannot parse SLURM node list {nodelist!r}")
    return m.group(1) + (m.group(2) or "")


def cluster_env(environ: Mapping[str, str]) -> dict[str, str]:
    """torch.distributed's variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT) for a job step that a launcher other than torchrun started
    with several tasks, one process each: an ``srun`` step (which is how submitit runs a
    hydra/launcher=slurm job) or a submitit local job. Empty when torchrun's variables are
    already set or there is a single task."""
    if "WORLD_SIZE" in environ:
        return {}
    if environ.get("SUBMITIT_EXECUTOR") == "local":
        rank, world, local = (environ.get(f"SUBMITIT_LOCAL_{k}", "0")
                              for k in ("GLOBALID", "NTASKS", "LOCALID"))
        nodes, host, job = 1, "127.0.0.1", environ.get("SUBMITIT_LOCAL_JOB_ID", "0")
    elif "SLURM_PROCID" in environ and "SLURM_STEP_NUM_TASKS" in environ:
        rank, world = environ["SLURM_PROCID"], environ["SLURM_STEP_NUM_TASKS"]
        local = environ.get("SLURM_LOCALID", "0")
        nodes = int(environ.get("SLURM_STEP_NUM_NODES") or environ.get("SLURM_JOB_NUM_NODES")
                    or 1)
        host = first_host(environ.get("SLURM_STEP_NODELIST")
                          or environ.get("SLURM_JOB_NODELIST") or "127.0.0.1")
        job = environ.get("SLURM_JOB_ID", "0")
    else:
        return {}
    if int(world) <= 1:
        return {}
    port = 20000 + int(re.sub(r"\D", "", job) or 0) % 40000
    return {"RANK": rank, "WORLD_SIZE": world, "LOCAL_RANK": local,
            "LOCAL_WORLD_SIZE": str(int(world) // nodes),
            "MASTER_ADDR": environ.get("MASTER_ADDR") or host,
            "MASTER_PORT": environ.get("MASTER_PORT") or str(port)}


def setup(device: torch.device) -> Dist:
    """Join the process group that the launcher set up (idempotent: a Hydra multirun calls
    it once per job), or return a single-process :class:`Dist` on ``device``.

    With several ranks a CUDA ``device`` becomes ``cuda:LOCAL_RANK`` (modulo the GPUs this
    process sees), and logging below WARNING is left to rank 0.
    """
    os.environ.update(cluster_env(os.environ))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        visible = torch.cuda.device_count()  # 1 per rank (SLURM's gpus_per_task) is fine
        if per_node > visible > 1:
            raise ConfigError(f"{per_node} ranks on this node but {visible} GPUs visible: "
                              f"start one rank per GPU (GPUS={visible})")
        device = torch.device("cuda", local % visible)
        torch.cuda.set_device(device)
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # never NVLink multicast
    if not dist.is_initialized():  # rank 0 alone may spend minutes on a download or a
        timeout = datetime.timedelta(minutes=30)  # multi-GB checkpoint while others wait
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device, timeout=timeout)
        else:
            dist.init_process_group("gloo", timeout=timeout)
        atexit.register(_teardown)
    if rank != 0:
        log.setLevel(logging.WARNING)
    return Dist(rank=rank, world=world, local_rank=local, device=device)


def _teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
