"""Steady-state training speed of a preset (default: ``make text8-monarch2``'s), measured
in the real training loop.

    python -m monarchpc.bench recipe           # text8_monarch2: 2 warm-up + 10 timed updates
    python -m monarchpc.bench recipe --record  # docs/results/device/text8_monarch2_speed_<gpu>.json
    python -m monarchpc.bench recipe --tiny    # a small model on the CPU (CI smoke test)
    make bench-recipe GPUS=2                   # data parallel (torchrun, one rank per GPU)

What runs is the preset's composed config (``experiment=text8_monarch2``: Monarch-2
h = 2^19 = 512 x 1024, bf16 products, micro-batches of 512 rows x 8 per update,
``keep_gb=auto``, segment 16, ...) with changes that leave an update's work as it is:

* ``init=random`` instead of ``init=multiply``: multiplication first trains two dense factor
  HMMs (hours), which is not the recipe's steady state. An E-step and an EM step run the
  same kernels on the same shapes whatever the parameter values, so an update costs the same.
* the data (default ``--data synthetic``): text8-shaped rows generated in memory, uniform
  over the preset's 27 symbols, ``dataset.seq_len`` (256) long, enough for every update in
  one epoch. text8 is not read; an update's work does not depend on the token values.
  ``--data config`` builds the preset's data set instead (text8: ``data/text8/text8.zip``
  or ``-- dataset.path=PATH``; no download on a machine without internet).
* no evaluation (``trainer.eval_every`` beyond the run, ``long_eval=never``), no logger, no
  progress bar. The real run evaluates every 200 updates; that time is not an update's.

The run goes through :func:`monarchpc.run.trainer.prepare` and :meth:`Trainer.fit` with
``trainer.stop_after`` = warm-up + timed updates (fit's checkpoints at its start and end
are written as in any run, outside the updates). Each update is ``Trainer.update``, timed by
the trainer's own clock (``train_seconds``: the micro-batches' E-steps, the flows' reduction
across ranks, the divergence check and the EM step, synchronized); the E-step calls inside
it are timed separately. The first ``--warmup`` updates (Triton compilation, cuBLAS set-up,
CUDA-graph capture, the allocator's first segments) are reported but not counted.

Writes one JSON object (indented): settings, each update's seconds, the steady state's
tokens/s (timed updates' tokens over their seconds), peak GPU memory (allocated and
reserved) during the timed updates and over the whole run, ranks' parameter divergence
under data parallel, and the hours 20 epochs of the preset's data would take. Default file
outputs/bench/<experiment>_speed_<device>[_<n>gpu].json; ``--record``: docs/results/device/.
Extra Hydra overrides go after ``--``, e.g. ``-- trainer.keep_gb=0``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from monarchpc.bench.records import add_output_options, destination, device_tag
from monarchpc.data import Splits
from monarchpc.errors import ConfigError, DataError
from monarchpc.paths import REPO_ROOT

# The loop's settings that keep evaluation, logging and the progress bar out of the run.
QUIET = ["logger=none", "trainer.progress=false", "trainer.eval_at_start=false",
         "trainer.long_eval=never", "trainer.eval_every=1000000000"]
# --tiny: the preset's loop at CPU size (bf16 still takes the fused E-step, its PyTorch twins)
TINY = ["model.hidden_size=256", "model.factors=[16,16]", "optim.batch_size=8",
        "optim.accumulate=2", "dataset.seq_len=32", "trainer.device=cpu", "trainer.cpu_threads=1"]
SYNTHETIC = ("text8-shaped synthetic rows: uniform over the vocabulary, dataset.seq_len long, "
             "generated in memory (the preset's data set was not read; an update's work does "
             "not depend on the token values)")


def compose_recipe(experiment: str, overrides: list[str], run_dir: Path) -> DictConfig:
    """The training config of ``experiment=<experiment>`` with init=random, the quiet loop
    and ``overrides`` (later ones win), writing into ``run_dir``."""
    import monarchpc.train  # noqa: F401  (registers the repo_root resolver)

    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs"), version_base="1.3"):
        return compose("train", overrides=[f"experiment={experiment}", "init=random", *QUIET,
                                           f"run_dir={run_dir}", *overrides])


def synthetic_splits(cfg: DictConfig, micro_batches: int, vocab: int = 27) -> Splits:
    """Rows of the preset's shape: ``micro_batches * optim.batch_size`` training rows of
    ``dataset.seq_len`` tokens uniform over ``vocab`` symbols (uint8, as text8's), and a few
    dev/test rows (never evaluated here). Seeded: every rank draws the same rows."""
    seq_len, batch = int(cfg.dataset.seq_len), int(cfg.optim.batch_size)
    g = torch.Generator().manual_seed(int(cfg.seed))

    def rows(n: int) -> torch.Tensor:
        return torch.randint(0, vocab, (n, seq_len), generator=g, dtype=torch.uint8)

    return Splits(train=rows(micro_batches * batch), dev=rows(8), test=rows(8), vocab_size=vocab,
                  metric="bpc", info={"name": "synthetic text8-shaped rows", "sources": []})


def git_commit() -> str | None:
    """The checkout's commit (short), or None where there is no git repository."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    try:
        import triton
        triton_version: str | None = triton.__version__
    except ImportError:
        triton_version = None
    return {"python": platform.python_version(), "torch": torch.__version__,
            "triton": triton_version, "cuda": torch.version.cuda}


class Clock:
    """Times the trainer's updates (its ``train_seconds``) and the E-step calls inside them,
    and the peak GPU memory once the warm-up is over."""

    def __init__(self, trainer: Any, warmup: int) -> None:
        self.trainer, self.warmup = trainer, warmup
        self.device = trainer.device
        self.updates: list[dict[str, Any]] = []
        self.warmup_peak: int | None = None  # bytes allocated at most before the timed updates
        self.estep_seconds = 0.0
        self.micro_batches = 0
        update, estep = trainer.update, trainer.engine.estep

        def timed_estep(x: torch.Tensor) -> torch.Tensor:
            start = time.perf_counter()
            out = estep(x)
            self.sync()  # the trainer syncs right after (it reads the log-likelihoods)
            self.estep_seconds += time.perf_counter() - start
            self.micro_batches += 1
            return out

        def timed_update(*args: Any) -> bool:
            s = trainer.state
            if len(self.updates) == warmup and self.device.type == "cuda":
                self.warmup_peak = torch.cuda.max_memory_allocated(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)  # the steady state's peak
            seconds, tokens = s.train_seconds, s.tokens
            self.estep_seconds, self.micro_batches = 0.0, 0
            done = update(*args)
            if done:
                self.updates.append({
                    "update": s.update, "seconds": s.train_seconds - seconds,
                    "estep_seconds": self.estep_seconds, "micro_batches": self.micro_batches,
                    "tokens": s.tokens - tokens})
            return done

        trainer.update = timed_update  # fit() calls self.update: the instance's wins
        trainer.engine = dataclasses.replace(trainer.engine, estep=timed_estep)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def public(argv: list[str]) -> list[str]:
    """``argv`` without ``--out PATH`` (a machine's path has no place in a record)."""
    out, skip = [], False
    for a in argv:
        if skip or a.startswith("--out="):
            skip = False
            continue
        skip = a == "--out"
        if not skip:
            out.append(a)
    return out


def summary(updates: list[dict[str, Any]]) -> dict[str, Any]:
    """Tokens/s and update times of a list of timed updates."""
    seconds = [u["seconds"] for u in updates]
    tokens = sum(u["tokens"] for u in updates)
    total, estep = sum(seconds), sum(u["estep_seconds"] for u in updates)
    return {"updates": len(updates), "tokens": tokens, "seconds": total,
            "tokens_per_s": tokens / total, "update_seconds_median": statistics.median(seconds),
            "update_seconds_min": min(seconds), "update_seconds_max": max(seconds),
            "estep_seconds": estep, "estep_share": estep / total,
            "estep_tokens_per_s": tokens / estep if estep else None}


def settings(cfg: DictConfig, trainer: Any) -> dict[str, Any]:
    """The settings that decide an update's work, as the run resolved them."""
    m, o, t = cfg.model, cfg.optim, cfg.trainer
    return {"structure": m.structure, "block": m.get("block"), "hidden_size": int(m.hidden_size),
            "factors": list(trainer.spec.factors),
            "madds_per_token": trainer.model.madds_per_token(),
            "vocab_size": trainer.splits.vocab_size, "seq_len": trainer.splits.seq_len,
            "batch_size": int(o.batch_size), "accumulate": int(o.accumulate),
            "precision": t.precision, "engine": trainer.engine.name, "segment": int(t.segment),
            "keep_gb": t.keep_gb, "cuda_graphs": t.cuda_graphs, "products": t.products,
            "world_size": trainer.ddp.world}


def epoch_chars(cfg: DictConfig) -> int | None:
    """Training characters of the preset's data set (text8: its split's first part)."""
    split = cfg.dataset.get("split")
    return int(split[0]) if split else None


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    """Train ``--warmup`` + ``--updates`` updates of the preset; the record (rank 0) or None."""
    from monarchpc.config import check_config
    from monarchpc.run import trainer as trainer_module
    from monarchpc.run.tracking import RunLog
    from monarchpc.train import run as checked_run

    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = (REPO_ROOT / "outputs" / "bench" / "recipe_runs" / f"{args.experiment}-{stamp}")
    total = args.warmup + args.updates
    overrides = [*(TINY if args.tiny else []), f"trainer.stop_after={total}", *args.overrides]
    cfg = compose_recipe(args.experiment, overrides, run_dir)
    check_config(cfg)
    splits = (synthetic_splits(cfg, total * int(cfg.optim.accumulate))
              if args.data == "synthetic" else None)
    with contextlib.ExitStack() as stack:
        run_log = stack.enter_context(RunLog())
        trainer = trainer_module.prepare(cfg, checked_run, splits, None, run_log, stack)
        clock = Clock(trainer, args.warmup)
        device = trainer.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            start = time.perf_counter()
            trainer.fit()
            wall = time.perf_counter() - start
            steady_peak = (torch.cuda.max_memory_allocated(device),
                           torch.cuda.max_memory_reserved(device)) if device.type == "cuda" \
                else (None, None)
        finally:
            trainer.tracker.close()
        divergence = trainer.ddp.max_divergence(trainer.model)  # collective: every rank
        run_peak = (max(clock.warmup_peak or 0, torch.cuda.max_memory_allocated(device))
                    if device.type == "cuda" else None)  # start-up, warm-up and timed updates
        if len(clock.updates) < total:
            raise RuntimeError(f"the run stopped after {len(clock.updates)} of {total} "
                               f"updates (see {trainer.run_dir}/train.log)")
    if not trainer.ddp.is_main:
        return None
    if not args.keep_run:
        shutil.rmtree(trainer.run_dir, ignore_errors=True)
    warm, timed = clock.updates[:args.warmup], clock.updates[args.warmup:]
    applied = ["init=random", *QUIET, *overrides]  # beyond experiment=...
    steady = summary(timed)
    chars, epochs = epoch_chars(cfg), int(cfg.optim.epochs)

    def gb(n: int | None) -> float | None:
        return None if n is None else n / 1e9

    record: dict[str, Any] = {
        "what": f"experiment={args.experiment} (make {args.experiment.replace('_', '-')}): "
                f"steady-state EM updates in the real training loop (Trainer.fit), "
                f"{args.warmup} warm-up + {args.updates} timed updates",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "date": time.strftime("%Y-%m-%d"), "commit": git_commit(), "versions": versions(),
        "command": "python -m monarchpc.bench recipe " + " ".join(public(args.argv)),
        "experiment": args.experiment, "overrides": applied,
        "train_command": f"python -m monarchpc.train experiment={args.experiment} "
                         + " ".join(applied) + " (with the data and timing above)",
        "init": "random (the preset's init=multiply trains dense factor HMMs first; not timed, "
                "and an update costs the same whatever the parameter values)",
        "data": SYNTHETIC if args.data == "synthetic" else
                f"the preset's data set ({cfg.dataset.name})",
        "evaluation": "off (the preset evaluates every trainer.eval_every updates; not "
                      "part of an update)",
        "settings": settings(cfg, trainer),
        "tokens_per_update": timed[0]["tokens"] if timed else None,
        "steady": steady,
        "tokens_per_s": steady["tokens_per_s"],
        "peak_gpu_memory_gb": gb(steady_peak[0]), "peak_gpu_reserved_gb": gb(steady_peak[1]),
        "peak_gpu_memory_gb_whole_run": gb(run_peak),
        "rank_divergence": divergence,
        "warmup_updates": warm, "timed_updates": timed,
        "all_updates_tokens_per_s": sum(u["tokens"] for u in clock.updates) /
                                     sum(u["seconds"] for u in clock.updates),
        "fit_wall_seconds": wall,
    }
    if chars and not args.tiny:
        record[f"projected_hours_{epochs}_epochs"] = epochs * chars / steady["tokens_per_s"] / 3600
        record["epoch_chars"] = chars
    return record


def markdown(r: dict[str, Any]) -> str:
    s, cfg = r["steady"], r["settings"]
    peak = r["peak_gpu_memory_gb"]
    lines = [f"{r['experiment']} on {r['device']} x {cfg['world_size']}: h = {cfg['hidden_size']} "
             f"({' x '.join(map(str, cfg['factors']))}), {cfg['precision']}, micro-batches "
             f"{cfg['batch_size']} x {cfg['accumulate']}, engine {cfg['engine']}",
             "", "| update | seconds | E-step seconds | tokens/s |", "| --- | --- | --- | --- |"]
    warm = len(r["warmup_updates"])
    for i, u in enumerate(r["warmup_updates"] + r["timed_updates"]):
        tag = " (warm-up)" if i < warm else ""
        lines.append(f"| {u['update']}{tag} | {u['seconds']:.3f} | {u['estep_seconds']:.3f} | "
                     f"{u['tokens'] / u['seconds']:,.0f} |")
    lines += ["", f"steady state: {s['tokens_per_s']:,.0f} tokens/s over {s['updates']} updates "
              f"(median update {s['update_seconds_median']:.3f} s; E-steps {s['estep_share']:.1%} "
              f"of it, {s['estep_tokens_per_s'] or 0:,.0f} tokens/s), peak GPU memory "
              f"{'-' if peak is None else f'{peak:.1f} GB'}"]
    hours = next((v for k, v in r.items() if k.startswith("projected_hours")), None)
    if hours is not None:
        lines.append(f"projected: {hours:.2f} hours for the preset's epochs")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--experiment", default="text8_monarch2",
                        help="the preset (configs/experiment/); default text8_monarch2")
    parser.add_argument("--warmup", type=int, default=2, help="updates not counted (default 2)")
    parser.add_argument("--updates", type=int, default=10,
                        help="timed updates after the warm-up (default 10)")
    parser.add_argument("--data", choices=("synthetic", "config"), default="synthetic",
                        help="synthetic: text8-shaped rows in memory; config: the preset's "
                             "data set (must be present)")
    parser.add_argument("--tiny", action="store_true", help="a small model on the CPU")
    parser.add_argument("--keep-run", action="store_true",
                        help="keep the run directory (outputs/bench/recipe_runs/...)")
    add_output_options(parser)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (after --)")
    args = parser.parse_args(argv)
    args.argv = argv
    if args.warmup < 1 or args.updates < 1:
        parser.error("--warmup and --updates must be >= 1 (the first update compiles)")
    try:
        record = run(args)
    except (ConfigError, DataError) as err:
        print(f"monarchpc: error: {err}", file=sys.stderr)
        sys.exit(2)
    if record is None:  # a rank other than 0
        return
    device = torch.device("cuda" if record["device"] != "cpu" else "cpu")
    world = record["settings"]["world_size"]
    name = (f"{args.experiment}_speed_{device_tag(device)}"
            f"{f'_{world}gpu' if world > 1 else ''}.json")
    path = destination(args, name)
    text = json.dumps(record, indent=1)
    if path:
        Path(path).write_text(text + "\n")
    print(markdown(record))
    if path:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
