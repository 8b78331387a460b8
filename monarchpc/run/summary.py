"""A summary of every Hydra multirun: ``summary.md`` and ``summary.csv`` in the sweep directory.

:class:`SweepSummary` is a Hydra callback (``configs/hydra/callbacks/summary.yaml``,
enabled by ``configs/train.yaml``). After every job of a multirun it rewrites both files
from the job directories on disk (so a sweep that stops early still has its summary), and
at the end of the multirun it prints the Markdown table. One row per job: its number, the
overrides that differ between jobs (the ones all jobs share are listed once above the
table), status, final dev/test metrics, multiply-adds per token, updates and training wall
time, read from the job's ``run.json`` and ``metrics.jsonl``. A job that raised gets status
``failed`` and its error, which is also written to ``error.txt`` in its directory; a sweep
with a failed job exits 2 after its summary. Every job directory gets its ``.hydra/`` when
the job starts (:meth:`SweepSummary.on_job_start`), failed jobs included.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from monarchpc.files import atomic_write

ERROR_FILE = "error.txt"
METRIC_SUFFIXES = ("_bpc", "_bpd", "_ppl")


def job_row(job_dir: Path) -> dict[str, Any]:
    """One job's summary (plain values) from the files in its directory."""
    hydra_dir = job_dir / ".hydra"
    overrides = yaml.safe_load((hydra_dir / "overrides.yaml").read_text()) or []
    num = None
    if (hydra_dir / "hydra.yaml").is_file():
        hydra_cfg = yaml.safe_load((hydra_dir / "hydra.yaml").read_text()) or {}
        num = (hydra_cfg.get("hydra") or {}).get("job", {}).get("num")
    row: dict[str, Any] = {"job": num, "overrides": list(overrides), "dir": job_dir.name,
                           "status": "not started", "error": ""}
    info_path, metrics_path = job_dir / "run.json", job_dir / "metrics.jsonl"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        row.update(status=info.get("status"), metric=info.get("metric"),
                   madds_per_token=info.get("madds_per_token"), updates=info.get("updates"))
        final = info.get("final") or {}
        row.update({k: v for k, v in final.items() if k.endswith(METRIC_SUFFIXES)})
    if metrics_path.is_file():
        lines = [ln for ln in metrics_path.read_text().splitlines() if ln.strip()]
        if lines:
            row["train_seconds"] = json.loads(lines[-1]).get("wall_time")
    if (job_dir / ERROR_FILE).is_file():
        row.update(status="failed", error=(job_dir / ERROR_FILE).read_text().strip())
    return row


def sweep_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """Rows of every job directory (one holding ``.hydra/overrides.yaml``), by job number."""
    dirs = [p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")]
    rows = [job_row(d) for d in dirs]
    return sorted(rows, key=lambda r: (r["job"] is None, r["job"] or 0, r["dir"]))


def split_overrides(rows: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(override keys whose values differ between jobs, overrides shared by all jobs)."""
    values: dict[str, set[str]] = {}
    for r in rows:
        for o in r["overrides"]:
            key, _, value = o.partition("=")
            values.setdefault(key, set()).add(value)
    per_job = [dict(o.partition("=")[::2] for o in r["overrides"]) for r in rows]
    varying = [k for k, v in values.items()
               if len(v) > 1 or any(k not in job for job in per_job)]
    shared = [f"{k}={next(iter(v))}" for k, v in values.items() if k not in varying]
    return varying, shared


def metric_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The final-metric keys any job has, dev before test before train."""
    keys = {k for r in rows for k in r if k.endswith(METRIC_SUFFIXES)}
    order = {"dev": 0, "test": 1, "train": 2}
    return sorted(keys, key=lambda k: (order[k.split("_")[0]], k))


def _cell(value: Any, key: str = "") -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, float):
        digits = 2 if key.endswith("_ppl") else 1 if key == "train_seconds" else 4
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown(sweep_dir: Path, rows: list[dict[str, Any]]) -> str:
    """The summary table as Markdown."""
    varying, shared = split_overrides(rows)
    metrics = metric_columns(rows)
    header = ["job", *varying, "status", *metrics, "madds/token", "updates", "train s", "dir"]
    lines = [f"# Sweep {sweep_dir}", "",
             f"{len(rows)} jobs; shared overrides: {' '.join(shared) or 'none'}", "",
             "| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for r in rows:
        job = dict(o.partition("=")[::2] for o in r["overrides"])
        status = r["status"] + (f": {r['error']}" if r["error"] else "")
        cells = [_cell(r["job"]), *(_cell(job.get(k)) for k in varying), _cell(status),
                 *(_cell(r.get(m), m) for m in metrics), _cell(r.get("madds_per_token")),
                 _cell(r.get("updates")), _cell(r.get("train_seconds"), "train_seconds"),
                 _cell(r["dir"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(sweep_dir: Path) -> str:
    """Write ``summary.md`` and ``summary.csv`` for the jobs under ``sweep_dir``; returns
    the Markdown. Each file is replaced atomically."""
    rows = sweep_rows(sweep_dir)
    text = markdown(sweep_dir, rows)
    metrics = metric_columns(rows)
    fields = ["job", "overrides", "status", "error", *metrics, "madds_per_token", "updates",
              "train_seconds", "dir"]
    tmp = sweep_dir / "summary.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fields, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "overrides": " ".join(r["overrides"])})
    os.replace(tmp, sweep_dir / "summary.csv")
    tmp = sweep_dir / "summary.md.tmp"
    tmp.write_text(text)
    os.replace(tmp, sweep_dir / "summary.md")
    return text


class SweepSummary(Callback):
    """Hydra callback: the sweep summary after every multirun job and at the end."""

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """A sweep job's directory gets its ``.hydra/`` now, as a single run's does once it
        is accepted, so that every job, failed ones included, is listed in the summary."""
        from hydra.types import RunMode

        from monarchpc.run.rundir import write_hydra_files

        job_dir = Path(config.hydra.runtime.output_dir)
        if config.hydra.mode == RunMode.MULTIRUN and not (job_dir / ".hydra").is_dir():
            task = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
            write_hydra_files(job_dir, task)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus
        from hydra.types import RunMode

        job_dir = Path(config.hydra.runtime.output_dir)
        if job_return.status == JobStatus.FAILED and job_dir.is_dir():
            err = job_return._return_value
            text = f"{type(err).__name__}: {err}\n"
            atomic_write(job_dir / ERROR_FILE, lambda f: f.write(text.encode()))  # no links
        if config.hydra.mode == RunMode.MULTIRUN:
            write_summary(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            print(write_summary(sweep_dir) + f"(also in {sweep_dir}/summary.md and summary.csv)")
            failed = [r["dir"] for r in sweep_rows(sweep_dir) if r["status"] == "failed"]
            if failed:  # a sweep with a failed job does not end as if all had finished
                print(f"monarchpc: error: {len(failed)} job(s) of the sweep failed: "
                      f"{', '.join(failed)} (their error.txt says why)", file=sys.stderr)
                sys.exit(2)
