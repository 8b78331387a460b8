"""Run records: find and load the runs behind the tables and plots.

A run directory (``outputs/<name>/`` or ``outputs/multirun/<date>/<job>/``, any depth) is
recognised by its ``run.json``. It holds

* ``run.json``: what the run is (dataset, metric, structure, block, k, factors,
  hidden_size, madds_per_token, num_params, init, status, device,
  peak_gpu_memory_bytes, final, sampling_seconds_per_sequence, vocab_size, ...;
  ``gpu_seconds``, the measured wall time of the run's whole process on one GPU, is added
  by ``lab/campaign.py`` export);
* ``metrics.jsonl``: one evaluation per line (update, epoch, tokens, train_flops,
  step_size, wall_time, ``<split>_<metric>``, final);
* ``.hydra/config.yaml``: the composed config (what the Hydra CLI saves; ``config.yaml``
  or ``config.json`` in the run directory are read where it is absent);
* ``pruning.json``, ``sampling.json`` (optional): written by ``scripts/eval_pruning.py``
  and ``scripts/measure_sampling.py``.

Runs logged to wandb become the same :class:`RunRecord` through :func:`record_from_wandb`
(offline-testable) and :func:`load_wandb_runs` (the thin API call).

A run's reported value (:meth:`RunRecord.value`) is taken at its best dev evaluation: the
evaluation of ``metrics.jsonl`` with the lowest dev metric (the first of equal ones), the
model the training loop keeps as ``best.pt``; test is never looked at to choose it.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from monarchpc.circuits.blocks import BlockSpec
from monarchpc.errors import ConfigError

METRICS = ("bpc", "bpd", "ppl")
CONFIG_FILES = (".hydra/config.yaml", "config.yaml", "config.json")  # first found is read


@dataclass
class RunRecord:
    """One training run, from a run directory or from wandb."""

    name: str
    dataset: str
    metric: str
    structure: str
    block: str
    hidden_size: int
    k: int | None = None
    factors: list[int] | None = None
    madds_per_token: int | None = None
    num_params: int | None = None
    init: str = "random"
    status: str = "finished"
    device: str | None = None
    peak_gpu_memory_bytes: int | None = None
    gpu_seconds: float | None = None  # run.json's, where lab/campaign.py measured it
    final: dict[str, Any] | None = None
    sampling_seconds_per_sequence: float | None = None
    vocab_size: int | None = None
    factor_runs: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    pruning: dict[str, Any] | None = None
    path: str | None = None
    source: str = "dir"
    info: dict[str, Any] = field(default_factory=dict)  # the whole run.json (or wandb data)

    @property
    def kind(self) -> str:
        """"HMM", "Monarch-2", ..., "HCLT", "Monarch-HCLT": the label of plots and tables."""
        if self.structure == "hclt":
            return "HCLT" if self.block == "dense" else "Monarch-HCLT"
        return "HMM" if self.block == "dense" else f"Monarch-{self.k}"

    @property
    def jobs_per_gpu(self) -> int:
        """How many jobs shared the run's GPU at most (run.json's ``jobs_per_gpu``, written by
        lab/campaign.py; absent: 1). Above 1, ``gpu_seconds`` is an upper bound."""
        return int(self.info.get("jobs_per_gpu") or 1)

    @property
    def best_eval(self) -> dict[str, Any] | None:
        """The evaluation the tables report: the one of the lowest dev metric in
        ``metrics.jsonl`` (the first of equal ones; what ``best.pt`` holds), else run.json's
        ``best``, else ``final`` (records without a history); None if none has a dev value."""
        key = f"dev_{self.metric}"
        best = None
        for rec in self.history:
            if finite(rec.get(key)) and (best is None or rec[key] < best[key]):
                best = rec
        if best is None:
            for rec in (self.info.get("best"), self.final):
                if isinstance(rec, dict) and finite(rec.get(key)):
                    return rec
        return best

    @property
    def best_is_last(self) -> bool:
        """Whether the best dev evaluation is the run's last one (no early stop moved it)."""
        best, last = self.best_eval, self.final or (self.history[-1] if self.history else None)
        return best is None or last is None or best.get("update") == last.get("update")

    def value(self, split: str = "test", at: str = "best") -> float | None:
        """The run's ``<split>_<metric>`` (e.g. test_bpc); None if it was never evaluated.

        ``at="best"``: at the best dev evaluation (:attr:`best_eval`), None where that
        evaluation lacks ``split`` (the long test rows, scored at the end only); a run
        without any dev value: as ``"last"``. ``at="last"``: from ``final``, else the last
        evaluation that has it (a run still going)."""
        key = f"{split}_{self.metric}"
        best = self.best_eval if at == "best" else None
        if best is not None:
            return float(best[key]) if finite(best.get(key)) else None
        if self.final and finite(self.final.get(key)):
            return float(self.final[key])
        for rec in reversed(self.history):
            if finite(rec.get(key)):
                return float(rec[key])
        return None

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @property
    def tokens(self) -> int:
        """Training tokens seen at the last evaluation (0 if none)."""
        last = self.final or (self.history[-1] if self.history else {})
        return int(last.get("tokens") or 0)

    @property
    def transform(self) -> str | None:
        """The colour transform of an image run: "lossless" (YCoCg-R), "lossy" (quantized
        YCoCg) or "rgb"; None for other runs."""
        raw = (self.info.get("transform") or _get(self.info, "data.transform")
               or _get(self.config, "dataset.transform"))
        return None if raw is None else str(raw)

    @property
    def image_size(self) -> int | None:
        """The side in pixels of an image run's images (32, 64); None for other runs."""
        raw = (_get(self.info, "data.image_size") or self.setting("dataset.image_size")
               or self.setting("dataset.resolution"))
        return None if raw is None else int(raw)

    @property
    def train_images(self) -> int:
        """How many images an image run trained on (run.json's ``data.images.train``); 0
        for other runs and records without it."""
        return int(_get(self.info, "data.images.train") or 0)

    @property
    def truncated_tf32(self) -> bool:
        """Whether its scores came from TF32 Triton products that truncated their operands
        (they now round them): trained below fp32 on a GPU, Triton layer products (a Monarch
        HMM of k >= 3 or a Monarch-HCLT, products auto or triton), run.json without
        ``eval_precision`` (older). Such HMMs were scored in TF32 by design, HCLTs by a fault
        (the trainer's TF32 switch overrode their fp32 evaluation); either way about 0.003
        too high (``docs/results/device/tf32_rounding_h200.jsonl``). cuBLAS rounds: dense
        and Monarch-2 HMMs and dense HCLTs were not off."""
        trained = self.info.get("precision") or self.setting("trainer.precision")
        products = self.setting("trainer.products") or "auto"
        gpu = self.device not in (None, "cpu")
        triton = products == "triton" or (products == "auto" and gpu)
        layers = self.structure == "hclt" or (self.k or 0) >= 3
        return (self.block == "monarch" and layers and triton and gpu
                and trained not in (None, "fp32") and "eval_precision" not in self.info)

    def setting(self, *names: str) -> Any:
        """The first config value found among dotted ``names`` (None if none is set)."""
        for n in names:
            v = _get(self.config, n)
            if v is not None:
                return v
        return None

    def label(self) -> str:
        """Short description for table cells: name, size and init."""
        fac = "x".join(map(str, self.factors)) if self.factors else ""
        size = f"h={self.hidden_size}" + (f" ({fac})" if fac else "")
        star = "" if self.finished else f", {self.status}"
        return f"{self.name} [{size}, {self.init}{star}]"


# ---------------------------------------------------------------------------- run dirs

def find_run_dirs(roots: Iterable[str | Path]) -> list[Path]:
    """Every directory under ``roots`` (searched recursively) that holds a ``run.json``."""
    found: set[Path] = set()
    for root in roots:
        root = Path(root)
        if not root.exists():
            print(f"warning: {root} does not exist; no runs read from it")
        if (root / "run.json").is_file():
            found.add(root.resolve())
        if root.is_dir():
            found.update(p.parent.resolve() for p in root.rglob("run.json"))
    return sorted(found)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The evaluation records of a ``metrics.jsonl``; a truncated last line (a run being
    written) is skipped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def load_run(run_dir: str | Path) -> RunRecord:
    """The :class:`RunRecord` of one run directory."""
    run_dir = Path(run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    config: dict[str, Any] = {}
    for name in CONFIG_FILES:
        if (run_dir / name).is_file():
            config = yaml.safe_load((run_dir / name).read_text()) or {}  # JSON is YAML too
            break
    pruning_path = run_dir / "pruning.json"
    pruning = json.loads(pruning_path.read_text()) if pruning_path.is_file() else None
    sampling = run_dir / "sampling.json"  # kept if the training loop rewrote run.json
    if info.get("sampling_seconds_per_sequence") is None and sampling.is_file():
        info["sampling"] = json.loads(sampling.read_text())
        info["sampling_seconds_per_sequence"] = info["sampling"]["seconds_per_sequence"]
    return _record(info, config, read_metrics(run_dir / "metrics.jsonl"), pruning,
                   path=str(run_dir), source="dir")


def load_runs(roots: Iterable[str | Path]) -> list[RunRecord]:
    """Records of every run directory under ``roots``; unreadable ones are reported and
    skipped (a run.json being written)."""
    records = []
    for d in find_run_dirs(roots):
        try:
            records.append(load_run(d))
        except (OSError, ValueError, KeyError, TypeError) as err:
            print(f"skipping {d}: {err}")
    return records


def _record(info: dict[str, Any], config: dict[str, Any], history: list[dict[str, Any]],
            pruning: dict[str, Any] | None, path: str | None, source: str) -> RunRecord:
    """Build a record from run.json fields, falling back on the config where one is missing."""
    model = config.get("model") or {}

    def pick(key: str, default: Any = None) -> Any:
        v = info.get(key)
        return v if v is not None else model.get(key, default)

    block = pick("block", "dense")
    hidden = int(pick("hidden_size"))
    spec = info.get("block_spec")  # recorded by the run (older runs: resolved here)
    if spec is None:
        try:
            spec = BlockSpec.from_config({**model, "block": block, "hidden_size": hidden,
                                          "k": pick("k"), "factors": pick("factors")}
                                         ).describe()
        except (ConfigError, TypeError, ValueError):
            spec = None
    factors = list(spec["factors"]) if spec and block == "monarch" else None
    k = None if factors is None else len(factors)
    madds = info.get("madds_per_token")
    if madds is None and spec is not None and pick("structure", "hmm") == "hmm":
        madds = spec["madds_per_block"]
    dataset = info.get("dataset") or _get(config, "dataset.name") or "unknown"
    metric = info.get("metric") or _metric_from_keys(info.get("final") or {}, history) or "bpc"
    final = info.get("final")
    if final is None and info.get("status") == "finished" and history:
        final = next((r for r in reversed(history) if r.get("final")), None)
    init = info.get("init") or _get(config, "init.name") or "random"
    return RunRecord(
        name=str(info.get("name") or (Path(path).name if path else "run")),
        dataset=str(dataset), metric=str(metric),
        structure=str(pick("structure", "hmm")), block=str(block), hidden_size=hidden,
        k=k, factors=factors, madds_per_token=None if madds is None else int(madds),
        num_params=info.get("num_params"), init=str(init),
        status=str(info.get("status") or "finished"), device=info.get("device"),
        peak_gpu_memory_bytes=info.get("peak_gpu_memory_bytes"),
        gpu_seconds=info.get("gpu_seconds"), final=final,
        sampling_seconds_per_sequence=info.get("sampling_seconds_per_sequence"),
        vocab_size=info.get("vocab_size"), factor_runs=list(info.get("factor_runs") or []),
        history=history, config=config, pruning=pruning, path=path, source=source, info=info)


# ------------------------------------------------------------------------------- wandb

WANDB_STATES = {"finished": "finished", "running": "running", "crashed": "interrupted",
                "failed": "interrupted", "killed": "interrupted", "preempted": "interrupted"}


def record_from_wandb(name: str, config: dict[str, Any], summary: dict[str, Any],
                      state: str = "finished", history: list[dict[str, Any]] | None = None,
                      project: str = "", run_id: str | None = None) -> RunRecord:
    """A :class:`RunRecord` from a wandb run: ``config`` is the composed config the run
    was started with (monarchpc.run.tracking passes it to ``wandb.init``), ``summary`` the last
    logged metrics (dev_bpc, test_bpc, ... as logged from metrics.jsonl), ``history`` the
    logged evaluation rows. run.json fields found in the config (under ``run``) or the
    summary are used as they are; the rest is derived from the config."""
    info: dict[str, Any] = dict(config.get("run") or {})
    for key in ("madds_per_token", "num_params", "peak_gpu_memory_bytes", "device",
                "gpu_seconds", "sampling_seconds_per_sequence", "vocab_size", "init", "metric",
                "dataset"):
        if key in summary and key not in info:
            info[key] = summary[key]
    info.setdefault("name", name)
    info.setdefault("wandb_id", run_id)
    info.setdefault("status", WANDB_STATES.get(state, state))
    metrics = {k: v for k, v in summary.items()
               if not k.startswith("_") and isinstance(v, int | float)}
    rows = [r for r in (history or []) if any(k.endswith(METRICS) for k in r)]
    if info["status"] == "finished":
        info.setdefault("final", metrics or None)
    elif metrics:  # a run still going: its summary is the latest evaluation, not the final
        rows.append(metrics)
    return _record(info, config, rows, None, path=None, source=f"wandb:{project}")


def load_wandb_runs(project: str, api: Any = None, with_history: bool = False
                    ) -> list[RunRecord]:
    """Records of every run of wandb ``project`` ("entity/project"); ``api`` defaults to
    ``wandb.Api()`` (needs network and a login)."""
    if api is None:
        import wandb

        api = wandb.Api()
    out = []
    for run in api.runs(project):
        summary = getattr(run.summary, "_json_dict", None) or dict(run.summary)
        history = list(run.scan_history()) if with_history else None
        out.append(record_from_wandb(run.name, dict(run.config), summary, run.state,
                                     history, project, getattr(run, "id", None)))
    return out


def load_all(roots: Iterable[str | Path], wandb_projects: Iterable[str] = (),
             api: Any = None) -> list[RunRecord]:
    """Run directories under ``roots`` plus wandb projects; a wandb run that is also a run
    directory (its id is the run.json's ``wandb_id``; by name only where a wandb run has
    no id) is dropped: the directory is the record of truth."""
    records = load_runs(roots)
    ids = {r.info.get("wandb_id") for r in records} - {None}
    names = {r.name for r in records}
    for project in wandb_projects:
        for r in load_wandb_runs(project, api):
            wid = r.info.get("wandb_id")
            if (wid in ids) if wid is not None else (r.name in names):
                continue
            records.append(r)
    return records


# --------------------------------------------------------------------------- selection

def matching(records: Iterable[RunRecord], require_test: bool = True,
             **key: Any) -> list[RunRecord]:
    """Records whose fields equal every given ``key`` (dataset, structure, block, k,
    hidden_size, init, transform, ...) and, with ``require_test``, that have a test value."""
    return [r for r in records if all(getattr(r, f) == v for f, v in key.items())
            and (not require_test or r.value("test") is not None)]


def best(records: Iterable[RunRecord]) -> RunRecord | None:
    """The run a table row shows among runs of one setting: finished runs first, then runs
    whose scores are sound (not from truncating TF32 products: a rerun replaces such a
    run), then image runs trained on the most images (their dev sets differ, so dev cannot
    choose between them), then the lowest dev metric (model selection on dev, never on
    test), then the most tokens."""
    def rank(r: RunRecord) -> tuple[bool, bool, int, float, int]:
        dev = r.value("dev")
        return (not r.finished, r.truncated_tf32, -r.train_images,
                dev if dev is not None else math.inf, -r.tokens)

    records = list(records)
    return min(records, key=rank) if records else None


def select(records: Iterable[RunRecord], **key: Any) -> RunRecord | None:
    """The run feeding the table row of setting ``key`` (see :func:`matching`, :func:`best`)."""
    return best(matching(records, **key))


def select_largest(records: Iterable[RunRecord], **key: Any) -> RunRecord | None:
    """Among runs of ``key``, the best run of the largest hidden size."""
    found = matching(records, **key)
    if not found:
        return None
    h = max(r.hidden_size for r in found)
    return best(r for r in found if r.hidden_size == h)


# ----------------------------------------------------------------------------- helpers

def _get(cfg: dict[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def _metric_from_keys(final: dict[str, Any], history: list[dict[str, Any]]) -> str | None:
    for rec in [final, *reversed(history)]:
        for key in rec:
            for m in METRICS:
                if key.endswith("_" + m):
                    return m
    return None


def source_parser(description: str) -> argparse.ArgumentParser:
    """The command-line options shared by the report scripts: --runs, --out, --wandb-project."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=["outputs"],
                   help="run directories or folders searched recursively for run.json")
    p.add_argument("--out", default="outputs/reports",
                   help="output folder (docs/results is regenerated by make results)")
    p.add_argument("--wandb-project", action="append", default=[],
                   help="also read runs of this wandb project (entity/project); repeatable")
    return p


def load_from_args(args: argparse.Namespace) -> list[RunRecord]:
    """The runs named by :func:`source_parser`'s options, with a line saying how many."""
    records = load_all(args.runs, args.wandb_project)
    print(f"loaded {len(records)} runs from {', '.join(args.runs)}"
          + (f" and wandb {args.wandb_project}" if args.wandb_project else ""))
    return records
