"""Run a campaign of training runs on the GPUs of one machine, then export their records.

    python lab/campaign.py --jobs docs/results/campaigns/em_ablation.txt \
        --out outputs/campaign --deadline 520 --export docs/results/runs/em_ablation

A jobs file holds one run per line, ``name: override override ...`` (Hydra overrides of
``python -m monarchpc.train``; ``#`` starts a comment; ``--common`` adds overrides to
every job). Jobs start in file order (or in ``--only``'s order), each as soon as a GPU has
room: one job per GPU (``--per-gpu`` for more; a ``--solo`` job always alone). Each runs
in ``<out>/<name>`` with its log beside it; a job whose run directory already holds a
finished run is skipped. No job starts after ``--last-start`` seconds; past ``--deadline``
seconds the running jobs get SIGINT (they stop at an update boundary with a checkpoint,
so a later invocation resumes them; ``--keep DIR`` copies such runs, small enough, out of
a machine that will not last, and ``--resume-from DIR`` puts them back on the next one,
their process seconds added up).

Export: each run's ``run.json``, ``metrics.jsonl`` and ``config.yaml`` (and
``pruning.json`` of scripts/eval_pruning.py) are copied to ``<export>/<name>/`` with no
absolute path of this machine left in them (paths under the repository become relative;
data files are named by file name, size and sha256). run.json gains ``gpu_seconds``, the
measured wall time of the job's process (evaluation and data loading included), and
``jobs_per_gpu``, the most jobs its GPU ran at once meanwhile (above 1, the seconds are
an upper bound); both are kept in ``<out>/<name>.seconds`` for a later invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from monarchpc.files import file_sha256

REPO = Path(__file__).resolve().parents[1]


def read_jobs(path: Path, common: list[str]) -> list[tuple[str, list[str]]]:
    """[(name, overrides)] from a jobs file (see the module docstring)."""
    jobs = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, rest = line.partition(":")
        jobs.append((name.strip(), [*common, *shlex.split(rest)]))
    names = [n for n, _ in jobs]
    if len(set(names)) != len(names):
        raise SystemExit(f"{path}: job names repeat")
    return jobs


def status(run_dir: Path) -> str | None:
    info = run_dir / "run.json"
    return json.loads(info.read_text()).get("status") if info.is_file() else None


def train_command(name: str, overrides: list[str], run_dir: Path) -> list[str]:
    """The training run of one job (resumed where its run directory holds a checkpoint)."""
    resume = ["resume=true"] if (run_dir / "checkpoint.pt").is_file() else []
    return [sys.executable, "-m", "monarchpc.train", *overrides, *resume,
            f"run_dir={run_dir}", f"run_name={name}", "hydra.run.dir=" + str(run_dir)]


@dataclass
class Job:
    """A started job: its process, GPU, start time, log, and the most jobs its GPU ran at
    once while it ran (1: the GPU was its own); ``before``: seconds and sharing of the
    invocations it resumes from."""

    proc: subprocess.Popen
    gpu: int
    t0: float
    log: Any
    before: tuple[float, int] = (0.0, 1)
    shared: int = 1
    stopped: bool = False


def visible_device(gpu: int) -> str:
    """The CUDA_VISIBLE_DEVICES of a job on GPU ``gpu`` (counted among the GPUs this process
    sees: with CUDA_VISIBLE_DEVICES=2,3 set, GPU 1 is device 3)."""
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return visible[gpu].strip() if gpu < len(visible) else str(gpu)


def run_jobs(jobs: list[tuple[str, list[str]]], out: Path, gpus: int, per_gpu: int,
             deadline: float, last_start: float = float("inf"), solo: frozenset[str] = frozenset(),
             command: Callable[[str, list[str], Path], list[str]] = train_command,
             poll_s: float = 2.0) -> dict[str, tuple[float, int]]:
    """Run the jobs, at most ``per_gpu`` per GPU (a ``solo`` job alone on its GPU), the
    first in the queue that fits first; returns name -> (seconds of its process, most jobs
    on its GPU at once), also written to ``<out>/<name>.seconds``."""
    start, running = time.monotonic(), {}
    done: dict[str, tuple[float, int]] = {}
    out.mkdir(parents=True, exist_ok=True)
    queue = []
    for name, overrides in jobs:
        if status(out / name) == "finished":
            print(f"{name}: finished already", flush=True)
        else:
            queue.append((name, overrides))

    def fits(name: str, gpu: int) -> bool:
        here = [n for n, j in running.items() if j.gpu == gpu]
        return not here if name in solo else len(here) < per_gpu and not solo & set(here)

    while queue or running:
        late = time.monotonic() - start > deadline
        for name, job in list(running.items()):
            job.shared = max(job.shared, sum(j.gpu == job.gpu for j in running.values()))
            if late and job.proc.poll() is None and not job.stopped:
                job.proc.send_signal(signal.SIGINT)
                job.stopped = True
            if job.proc.poll() is not None:
                done[name] = (job.before[0] + time.monotonic() - job.t0,
                              max(job.before[1], job.shared))
                (out / f"{name}.seconds").write_text(json.dumps(
                    {"seconds": round(done[name][0], 1), "jobs_per_gpu": done[name][1]}) + "\n")
                job.log.close()
                del running[name]
                print(f"[{time.monotonic() - start:6.0f}s] {name}: exit {job.proc.returncode}, "
                      f"{done[name][0]:.0f} s, {status(out / name)}", flush=True)
        closed = late or time.monotonic() - start > last_start
        for name, overrides in [] if closed else list(queue):
            gpu = next((g for g in range(gpus) if fits(name, g)), None)
            if gpu is None:
                continue
            queue.remove((name, overrides))
            run_dir = out / name
            resumed = (run_dir / "checkpoint.pt").is_file()
            before = (recorded_seconds(out, name) if resumed else None) or (0.0, 1)
            env = dict(os.environ, CUDA_VISIBLE_DEVICES=visible_device(gpu),
                       PYTHONUNBUFFERED="1")
            log = open(out / f"{name}.log", "a")  # noqa: SIM115  (closed when the job ends)
            proc = subprocess.Popen(command(name, overrides, run_dir), stdout=log,
                                    stderr=subprocess.STDOUT, env=env, cwd=REPO)
            running[name] = Job(proc, gpu, time.monotonic(), log, before)
            print(f"[{time.monotonic() - start:6.0f}s] {name} on GPU {gpu}", flush=True)
        if closed and not running:
            break
        time.sleep(poll_s)
    for name, _ in queue:
        print(f"{name}: not started (past --last-start or --deadline)", flush=True)
    return done


def scrub(value: Any) -> Any:
    """A copy of ``value`` with every absolute path made relative to the repository, or
    reduced to a file description ({name, bytes, sha256}) when it names a file elsewhere."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        path = Path(value)
        if path.is_file():
            return {"name": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}
        try:
            return str(path.resolve().relative_to(REPO))
        except ValueError:
            return f"<outside the repository>/{path.name}"
    return value


def export(run_dir: Path, dest: Path, gpu_seconds: float | None, jobs_per_gpu: int = 1) -> None:
    """Copy ``run_dir``'s records to ``dest`` without absolute paths (see module docstring);
    ``jobs_per_gpu`` > 1: other jobs shared its GPU at times, so ``gpu_seconds`` is an upper
    bound."""
    dest.mkdir(parents=True, exist_ok=True)
    info = scrub(json.loads((run_dir / "run.json").read_text()))
    if gpu_seconds is not None:
        info["gpu_seconds"] = round(gpu_seconds, 1)
        info["jobs_per_gpu"] = jobs_per_gpu
    (dest / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    (dest / "metrics.jsonl").write_text((run_dir / "metrics.jsonl").read_text())
    config = scrub(yaml.safe_load((run_dir / "config.yaml").read_text()))
    (dest / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    pruning = run_dir / "pruning.json"
    if pruning.is_file():
        text = json.dumps(scrub(json.loads(pruning.read_text())), indent=2)
        (dest / "pruning.json").write_text(text + "\n")


def recorded_seconds(out: Path, name: str) -> tuple[float, int] | None:
    """(process seconds, most jobs on its GPU at once) an earlier invocation measured."""
    path = out / f"{name}.seconds"
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    return float(info["seconds"]), int(info["jobs_per_gpu"])


KEPT_FILES = ("checkpoint.pt", "run.json", "metrics.jsonl", "config.yaml", "train.log")


def keep_interrupted(out: Path, names: list[str], dest: Path, max_mb: float) -> list[str]:
    """Copy the runs among ``names`` that stopped with a checkpoint of at most ``max_mb``
    (with their process seconds) to ``dest``, for a later invocation on another machine
    (:func:`seed_from`) to resume; returns the names kept."""
    kept = []
    for name in names:
        run_dir = out / name
        ckpt = run_dir / "checkpoint.pt"
        if status(run_dir) == "finished" or not ckpt.is_file() \
                or ckpt.stat().st_size > max_mb * 2**20:
            continue
        (dest / name).mkdir(parents=True, exist_ok=True)
        for f in KEPT_FILES:
            if (run_dir / f).is_file():
                shutil.copy2(run_dir / f, dest / name / f)
        if (out / f"{name}.seconds").is_file():
            shutil.copy2(out / f"{name}.seconds", dest / f"{name}.seconds")
        kept.append(name)
    return kept


def seed_from(source: Path, out: Path, names: list[str]) -> list[str]:
    """Put the runs :func:`keep_interrupted` kept in ``source`` into ``out`` (where ``out``
    holds no checkpoint of theirs yet), so that they resume; returns the names seeded."""
    seeded = []
    for name in names:
        if not (source / name / "checkpoint.pt").is_file() or \
                (out / name / "checkpoint.pt").is_file():
            continue
        shutil.copytree(source / name, out / name, dirs_exist_ok=True)
        if (source / f"{name}.seconds").is_file():
            shutil.copy2(source / f"{name}.seconds", out / f"{name}.seconds")
        seeded.append(name)
    return seeded


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jobs", type=Path, required=True)
    p.add_argument("--common", default="", help="overrides added to every job")
    p.add_argument("--only", default="", help="comma-separated job names to run (default all)")
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "campaign")
    p.add_argument("--gpus", type=int, default=None, help="default: every visible GPU")
    p.add_argument("--per-gpu", type=int, default=1, help="jobs at once on one GPU")
    p.add_argument("--solo", default="", help="comma-separated job names that run alone on a GPU")
    p.add_argument("--deadline", type=float, default=float("inf"), help="seconds")
    p.add_argument("--last-start", type=float, default=float("inf"),
                   help="seconds after which no job starts")
    p.add_argument("--export", type=Path, default=None, help="records destination")
    p.add_argument("--keep", type=Path, default=None,
                   help="copy runs stopped by the deadline (checkpoint, records, seconds) here")
    p.add_argument("--keep-max-mb", type=float, default=40.0,
                   help="largest checkpoint --keep copies")
    p.add_argument("--resume-from", type=Path, default=None,
                   help="a --keep folder of an earlier invocation: its runs resume here")
    args = p.parse_args()
    jobs = read_jobs(args.jobs, shlex.split(args.common))
    if args.only:
        by_name = dict(jobs)
        wanted = args.only.split(",")
        unknown = [n for n in wanted if n not in by_name]
        if unknown:
            raise SystemExit(f"{args.jobs}: no job named {', '.join(unknown)}")
        jobs = [(n, by_name[n]) for n in wanted]
    gpus = args.gpus
    if gpus is None:
        import torch

        gpus = max(1, torch.cuda.device_count())
    names = [n for n, _ in jobs]
    if args.resume_from is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        print(f"resuming from {args.resume_from}: {seed_from(args.resume_from, args.out, names)}")
    measured = run_jobs(jobs, args.out, gpus, args.per_gpu, args.deadline, args.last_start,
                        frozenset(filter(None, args.solo.split(","))))
    for name, _ in jobs:
        if name not in measured and (m := recorded_seconds(args.out, name)) is not None:
            measured[name] = m
    rows = []
    for name, _ in jobs:
        run_dir = args.out / name
        if not (run_dir / "run.json").is_file():
            rows.append((name, "missing", None, None, None))
            continue
        info = json.loads((run_dir / "run.json").read_text())
        final = info.get("final") or {}
        metric = info.get("metric", "bpc")
        seconds, shared = measured.get(name, (None, 1))
        rows.append((name, info.get("status"), final.get(f"dev_{metric}"),
                     final.get(f"test_{metric}"), seconds))
        if args.export is not None and info.get("status") in ("finished", "diverged"):
            export(run_dir, args.export / name, seconds, shared)
    if args.keep is not None:
        kept = keep_interrupted(args.out, names, args.keep, args.keep_max_mb)
        print(f"kept for --resume-from: {kept}")  # (no path of this machine in the log)
    print("\n| run | status | dev | test | process s |\n| --- | --- | --- | --- | --- |")
    for name, st, dev, test, sec in rows:
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        print(f"| {name} | {st} | {fmt(dev)} | {fmt(test)} | "
              f"{'-' if sec is None else f'{sec:.0f}'} |")


if __name__ == "__main__":
    main()
