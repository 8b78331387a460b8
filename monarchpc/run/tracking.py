"""Run records: ``metrics.jsonl`` and ``run.json`` in the run directory, mirrored to wandb.

``metrics.jsonl`` gets one JSON object per evaluation (update, epoch, tokens seen,
cumulative training FLOPs, metrics, step size, wall time); ``run.json`` describes the run
(model, sizes, status, final metrics). Reports read only these files, so every table and
plot can be regenerated from the runs behind it.

Exactly one line per evaluation, across any number of interruptions: opening the file
drops a partial last line (a write cut short by a crash); :meth:`Tracker.truncate_after`
drops the records written after the checkpoint a resume starts from; and a record for an
update that already has one (the resumed loop evaluating that update again) replaces it
and everything after it. Rewrites are atomic.

wandb runs offline unless the logger config says ``mode: online``; ``logger=none`` turns
it off. It prints nothing on the console but one line saying where the run is kept (and,
offline, how to ``wandb sync`` it).
"""

from __future__ import annotations

import io
import json
import logging
import logging.handlers
import os
from pathlib import Path
from typing import Any

import torch

from monarchpc.errors import DataError
from monarchpc.files import atomic_write, open_append, refuse_link, write_failure
from monarchpc.settings import Settings, choice, list_of, text

log = logging.getLogger(__name__)

METRICS = "metrics.jsonl"


LOGGER: Settings = {
    "name": (choice("wandb", "none"), "where records are mirrored"),
    "project": (text(), "the wandb project"),
    "entity": (text(none=True), "the wandb entity; null for yours"),
    "mode": (choice("offline", "online", "disabled"), "wandb's mode"),
    "tags": (list_of(text(), "strings", empty=True), "wandb tags"),
}
"""The ``logger`` group (configs/logger/)."""

def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and an atomic rename."""
    text = json.dumps(obj, indent=2, default=str) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """(records of a ``metrics.jsonl``, whether a partial last line was left out); ([], False)
    if there is no file. A line that is not a record anywhere else raises :class:`DataError`.
    """
    if not path.is_file():
        return [], False
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
    while lines and not lines[-1].strip():
        lines.pop()
    records = []
    for i, line in enumerate(lines, 1):
        try:
            record = json.loads(line) if line.strip() else {}
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("update"), int):
            records.append(record)
        elif i == len(lines):  # a write cut short (kill -9, power loss)
            return records, True
        elif line.strip():
            raise DataError(f"{path} line {i} is not an evaluation record ({line[:60]!r}); "
                            f"repair or delete that line, then resume")
    return records, bool(lines) and not lines[-1].endswith("\n")


def write_metrics(path: Path, records: list[dict[str, Any]]) -> None:
    """Replace ``metrics.jsonl`` with ``records``, one JSON object a line, atomically."""
    text = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write(path, lambda f: f.write(text.encode()))


class Tracker:
    """Appends evaluation records to ``metrics.jsonl`` and sends them to wandb."""

    def __init__(self, run_dir: Path, logger_cfg: dict[str, Any], config: dict[str, Any],
                 wandb_id: str | None = None) -> None:
        self.run_dir = run_dir
        self.metrics_path = run_dir / METRICS
        refuse_link(self.metrics_path)  # neither read nor rewritten through a planted link
        self.records, torn = read_metrics(self.metrics_path)
        if torn and self.metrics_path.is_file():
            write_metrics(self.metrics_path, self.records)  # without the partial last line
        self.wandb = None
        self.wandb_id = wandb_id
        if logger_cfg.get("name", "none") == "wandb":
            self.wandb = self._start_wandb(logger_cfg, config)

    def _start_wandb(self, logger_cfg: dict[str, Any], config: dict[str, Any]) -> Any:
        import wandb  # imported here: it is slow to import and optional for a run

        mode = logger_cfg.get("mode", "offline")
        run = wandb.init(
            project=logger_cfg.get("project", "monarchpc"), entity=logger_cfg.get("entity"),
            mode=mode, dir=str(self.run_dir), name=self.run_dir.name, id=self.wandb_id,
            resume="allow", config=config, tags=list(logger_cfg.get("tags") or []),
            settings=wandb.Settings(silent=True, console="off"))
        self.wandb_id = run.id
        run.define_metric("train_flops")
        for key in ("dev_*", "test_*", "train_*"):
            run.define_metric(key, step_metric="train_flops")
        if mode == "offline":
            log.info(f"wandb: offline run in {run.settings.sync_dir}; upload it with "
                     f"`wandb sync {run.settings.sync_dir}`")
        elif mode == "online":
            log.info(f"wandb: {run.url}")
        return run

    def log(self, record: dict[str, Any]) -> None:
        """Append one evaluation record (a flat dict of numbers) and mirror it to wandb.

        A record for an update that already has one replaces it and all later records.
        """
        update = int(record["update"])
        if self.records and int(self.records[-1]["update"]) >= update:
            self._keep(lambda r: int(r["update"]) < update)
        try:
            with open_append(self.metrics_path) as f:  # never through a planted link
                f.write((json.dumps(record) + "\n").encode())
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:  # a partial line is dropped when the run resumes
            raise DataError(f"cannot append to {self.metrics_path} "
                            f"({write_failure(err, self.run_dir)}): free disk space and "
                            f"continue with resume=true") from None
        self.records.append(record)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if isinstance(v, int | float)},
                           step=update)

    def truncate_after(self, update: int) -> None:
        """Drop records past ``update`` (written after the checkpoint a resume starts from)."""
        if any(int(r["update"]) > update for r in self.records):
            self._keep(lambda r: int(r["update"]) <= update)

    def _keep(self, wanted: Any) -> None:
        self.records = [r for r in self.records if wanted(r)]
        write_metrics(self.metrics_path, self.records)

    def last_record(self) -> dict[str, Any]:
        """The last evaluation record written ({} if none), e.g. when resuming."""
        return dict(self.records[-1]) if self.records else {}

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


class NullTracker:
    """The :class:`Tracker` of data-parallel ranks other than 0: records nothing."""

    wandb_id: str | None = None

    def log(self, record: dict[str, Any]) -> None:
        pass

    def truncate_after(self, update: int) -> None:
        pass

    def last_record(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


def run_record(cfg: Any, spec: Any, model: Any, splits: Any, device: Any, status: str,
               final: dict[str, Any] | None, updates: int, tokens: int,
               wandb_id: str | None, extra: dict[str, Any]) -> dict[str, Any]:
    """The content of ``run.json``: what ran (model, block spec, data), how far (status,
    updates, tokens), on what and with what result (``final``: the last evaluation)."""
    m = cfg.model
    cuda = getattr(device, "type", "cpu") == "cuda"
    return {
        "name": Path(cfg.run_dir).name, "dataset": splits.info.get("name"),
        "metric": splits.metric, "structure": m.structure, "block": spec.kind,
        "k": len(spec.factors) if spec.kind == "monarch" else None,
        "factors": list(spec.factors) if spec.kind == "monarch" else None,
        "block_spec": spec.describe(),
        "hidden_size": spec.hidden_size, "vocab_size": splits.vocab_size,
        "madds_per_token": model.madds_per_token(),
        "num_params": sum(p.numel() for p in model.parameters()),
        "init": cfg.init.name, "status": status, "updates": updates, "tokens": tokens,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
        "wandb_id": wandb_id, "data": splits.info, **extra, "final": final,
    }


class RunLog:
    """The log lines of one run: held in memory until the run is accepted (:meth:`open`),
    then appended to ``train.log`` in its directory with every later line, so a rejected
    invocation writes no file and the log holds the whole run, resumes included."""

    FORMAT = "[%(asctime)s][%(levelname)s] %(message)s"

    def __init__(self) -> None:
        self.root = logging.getLogger()
        self.memory = logging.handlers.MemoryHandler(capacity=1 << 20,
                                                     flushLevel=logging.CRITICAL + 1)
        self.file: logging.StreamHandler | None = None

    def __enter__(self) -> RunLog:
        self.root.addHandler(self.memory)
        return self

    def open(self, run_dir: Path) -> None:
        """Write the held lines, and all later ones, to ``run_dir/train.log``."""
        stream = io.TextIOWrapper(open_append(run_dir / "train.log"), encoding="utf-8",
                                  write_through=True)  # never through a planted link
        self.file = logging.StreamHandler(stream)
        self.file.setFormatter(logging.Formatter(self.FORMAT, "%Y-%m-%d %H:%M:%S"))
        self.memory.setTarget(self.file)
        self.memory.flush()
        self.root.removeHandler(self.memory)
        self.root.addHandler(self.file)

    def __exit__(self, *exc: object) -> None:
        for handler in (self.memory, self.file):
            if handler is not None:
                self.root.removeHandler(handler)
                handler.close()
        if self.file is not None:
            self.file.stream.close()
