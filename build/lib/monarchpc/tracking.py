"""Run records: ``metrics.jsonl`` and ``run.json`` in the run directory, mirrored to wandb.

``metrics.jsonl`` gets one JSON object per evaluation (update, epoch, tokens seen,
cumulative training FLOPs, metrics, step size, wall time); ``run.json`` describes the run
(model, sizes, status, final metrics). Reports read only these files, so every table and
plot can be regenerated from the runs behind it. wandb runs offline unless the logger
config says ``mode: online``; ``logger=none`` turns it off.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and an atomic rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


class Tracker:
    """Appends evaluation records to ``metrics.jsonl`` and sends them to wandb."""

    def __init__(self, run_dir: Path, logger_cfg: dict[str, Any], config: dict[str, Any],
                 wandb_id: str | None = None) -> None:
        self.run_dir = run_dir
        self.metrics_path = run_dir / "metrics.jsonl"
        self.wandb = None
        self.wandb_id = wandb_id
        if logger_cfg.get("name", "none") == "wandb":
            self.wandb = self._start_wandb(logger_cfg, config)

    def _start_wandb(self, logger_cfg: dict[str, Any], config: dict[str, Any]) -> Any:
        import wandb  # imported here: it is slow to import and optional for a run

        run = wandb.init(
            project=logger_cfg.get("project", "monarchpc"), entity=logger_cfg.get("entity"),
            mode=logger_cfg.get("mode", "offline"), dir=str(self.run_dir),
            name=self.run_dir.name, id=self.wandb_id, resume="allow", config=config,
            tags=list(logger_cfg.get("tags") or []))
        self.wandb_id = run.id
        run.define_metric("train_flops")
        for key in ("dev_*", "test_*", "train_*"):
            run.define_metric(key, step_metric="train_flops")
        return run

    def log(self, record: dict[str, Any]) -> None:
        """Append one evaluation record (a flat dict of numbers) and mirror it to wandb."""
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if isinstance(v, int | float)},
                           step=int(record["update"]))

    def truncate_after(self, update: int) -> None:
        """Drop records past ``update`` (written after the checkpoint a resume starts from)."""
        if not self.metrics_path.is_file():
            return
        lines = [ln for ln in self.metrics_path.read_text().splitlines()
                 if ln.strip() and json.loads(ln)["update"] <= update]
        self.metrics_path.write_text("".join(ln + "\n" for ln in lines))

    def last_record(self) -> dict[str, Any]:
        """The last evaluation record written ({} if none), e.g. when resuming."""
        if not self.metrics_path.is_file():
            return {}
        lines = [ln for ln in self.metrics_path.read_text().splitlines() if ln.strip()]
        return json.loads(lines[-1]) if lines else {}

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
