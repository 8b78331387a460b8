"""Run a campaign of training runs on the GPUs of one machine, then export their records.

    python scripts/campaign.py --jobs docs/results/campaigns/em_ablation.txt \
        --out outputs/campaign --deadline 520 --export docs/results/runs/em_ablation

A jobs file holds one run per line, ``name: override override ...`` (Hydra overrides of
``python -m monarchpc.train``; ``#`` starts a comment; ``--common`` adds overrides to
every job). Jobs run in file order (or in ``--only``'s order), one per GPU at a time
(``--per-gpu`` for more), each in ``<out>/<name>`` with its log beside it. A job whose run
directory already holds a finished run is skipped. No job starts after ``--last-start``
seconds; past ``--deadline`` seconds the running jobs get SIGINT (they stop at an update
boundary with a checkpoint, so a later invocation resumes them).

Export: each run's ``run.json``, ``metrics.jsonl`` and ``config.yaml`` are copied to
``<export>/<name>/`` with no absolute path of this machine left in them (paths under the
repository become relative; data files are named by file name, size and sha256), and the
measured wall time of the job's process (``gpu_seconds``: the whole process, evaluation
and data loading included, on one GPU; kept in ``<out>/<name>.seconds`` so a later
invocation exports it too) is added to run.json. ``pruning.json`` (scripts/eval_pruning.py)
travels with the records.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
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


def run_jobs(jobs: list[tuple[str, list[str]]], out: Path, gpus: int, per_gpu: int,
             deadline: float, last_start: float = float("inf")) -> dict[str, float]:
    """Run the jobs, at most ``per_gpu`` per GPU; returns name -> seconds of its process."""
    start, queue, running = time.monotonic(), list(jobs), {}
    seconds: dict[str, float] = {}
    slots = [g for g in range(gpus) for _ in range(per_gpu)]
    out.mkdir(parents=True, exist_ok=True)
    while queue or running:
        late = time.monotonic() - start > deadline
        for name, (proc, slot, t0, log) in list(running.items()):
            if late and proc.poll() is None and not getattr(proc, "interrupted", False):
                proc.send_signal(signal.SIGINT)
                proc.interrupted = True  # type: ignore[attr-defined]
            if proc.poll() is not None:
                seconds[name] = time.monotonic() - t0
                (out / f"{name}.seconds").write_text(f"{seconds[name]:.1f}\n")
                log.close()
                slots.append(slot)
                del running[name]
                print(f"[{time.monotonic() - start:6.0f}s] {name}: exit {proc.returncode}, "
                      f"{seconds[name]:.0f} s, {status(out / name)}", flush=True)
        closed = late or time.monotonic() - start > last_start
        while queue and slots and not closed:
            name, overrides = queue.pop(0)
            run_dir = out / name
            if status(run_dir) == "finished":
                print(f"{name}: finished already", flush=True)
                continue
            slot = slots.pop(0)
            resume = ["resume=true"] if (run_dir / "checkpoint.pt").is_file() else []
            cmd = [sys.executable, "-m", "monarchpc.train", *overrides, *resume,
                   f"run_dir={run_dir}", f"run_name={name}", "hydra.run.dir=" + str(run_dir)]
            env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(slot), PYTHONUNBUFFERED="1")
            log = open(out / f"{name}.log", "a")  # noqa: SIM115  (closed when the job ends)
            running[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                              env=env, cwd=REPO), slot, time.monotonic(), log)
            print(f"[{time.monotonic() - start:6.0f}s] {name} on GPU {slot}", flush=True)
        if closed and not running:
            break
        time.sleep(2)
    for name, _ in queue:
        print(f"{name}: not started (past --last-start or --deadline)", flush=True)
    return seconds


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
    ``jobs_per_gpu`` > 1 says the GPU was shared, so ``gpu_seconds`` is an upper bound."""
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


def recorded_seconds(out: Path, name: str) -> float | None:
    """The process seconds an earlier invocation measured for job ``name``, if any."""
    path = out / f"{name}.seconds"
    return float(path.read_text()) if path.is_file() else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jobs", type=Path, required=True)
    p.add_argument("--common", default="", help="overrides added to every job")
    p.add_argument("--only", default="", help="comma-separated job names to run (default all)")
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "campaign")
    p.add_argument("--gpus", type=int, default=None, help="default: every visible GPU")
    p.add_argument("--per-gpu", type=int, default=1)
    p.add_argument("--deadline", type=float, default=float("inf"), help="seconds")
    p.add_argument("--last-start", type=float, default=float("inf"),
                   help="seconds after which no job starts")
    p.add_argument("--export", type=Path, default=None, help="records destination")
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
    seconds = run_jobs(jobs, args.out, gpus, args.per_gpu, args.deadline, args.last_start)
    for name, _ in jobs:
        if name not in seconds and (sec := recorded_seconds(args.out, name)) is not None:
            seconds[name] = sec
    rows = []
    for name, _ in jobs:
        run_dir = args.out / name
        if not (run_dir / "run.json").is_file():
            rows.append((name, "missing", None, None, None))
            continue
        info = json.loads((run_dir / "run.json").read_text())
        final = info.get("final") or {}
        metric = info.get("metric", "bpc")
        rows.append((name, info.get("status"), final.get(f"dev_{metric}"),
                     final.get(f"test_{metric}"), seconds.get(name)))
        if args.export is not None and info.get("status") in ("finished", "diverged"):
            export(run_dir, args.export / name, seconds.get(name), args.per_gpu)
    print("\n| run | status | dev | test | process s |\n| --- | --- | --- | --- | --- |")
    for name, st, dev, test, sec in rows:
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        print(f"| {name} | {st} | {fmt(dev)} | {fmt(test)} | "
              f"{'-' if sec is None else f'{sec:.0f}'} |")


if __name__ == "__main__":
    main()
