"""Issue 33's device runs as batches: one command a device call, records landed between them.

    python3 lab/batches.py list               # every batch: jobs, estimated seconds, carry
    python3 lab/batches.py prep               # here: .devdata (data) and .devsite (Hydra) to carry
    python3 lab/batches.py run P1-a [P1-b]    # there: the batches side by side, one GPU each
    python3 lab/batches.py land DIR           # here: the records a call brought back, from DIR

A batch is a group of jobs of one jobs file (``docs/results/campaigns/*.txt``, run by
``lab/campaign.py`` with the campaign's common overrides) sized to end within one device
call (``--deadline``, 510 s by default: the 10-minute limit less time to export and pack).
``run`` starts one ``lab/campaign.py`` per batch, each on its own GPU (more batches than
GPUs is an error), in ``outputs/campaign/<campaign>/``; the finished runs' records (without
absolute paths) are packed into ``$OUT/records.tar.gz`` and each campaign's summary into
``$OUT/campaign-<batch>.log``. A job still going at the deadline stops at an update boundary
with its checkpoint: the same ``run`` command again, on the same warm machine (the next call
within its 30 s of warmth), resumes it; on a fresh machine it starts over. ``land`` unpacks
what came back into ``docs/results/runs/<campaign>/``, over the records of the same names
(a rerun replaces the run it reruns), and the logs beside them; then ``make results`` and a
commit (docs/results/campaigns/PLAN.md).

Estimated seconds are process seconds of each job under its batch's GPU sharing
(``per_gpu`` jobs at once, as the committed campaigns ran), from the committed records:
:data:`BATCHES` says how each was made; ``list`` adds each batch's expected wall time
(its jobs scheduled on ``per_gpu`` slots in order, as ``lab/campaign.py`` does).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CAMPAIGN_DIR = "docs/results/campaigns"
DEVDATA, DEVSITE = ".devdata", ".devsite"
DEADLINE = 510.0
SITE_PACKAGES = ("hydra", "omegaconf", "antlr4")
"""Imported by a run and missing from the device image: carried in .devsite (pure Python)."""

TINY_TARS = {  # the shared Tiny ImageNet tars (their PROVENANCE.md) -> sha256
    "tiny-imagenet-200_val.tar":
        "99499915e0fc4eda7889925192fca22ed5d14b692955e51c7e364eb08a1571a9",
    "tiny-imagenet-200_train-first100.tar":
        "a50498ea52e6ed11bdca30b8438226d700b29809d26e4a3ee7703df74a6cefec",
}
TEXT8_PREFIX = "text8_prefix/text8_first12500000.xz"
RUN_FLAGS = ["trainer.precision=bf16", "logger=none", "trainer.progress=false"]


@dataclass(frozen=True)
class Campaign:
    """A jobs file with its common overrides, and the data it reads (paths under .devdata)."""

    jobs: str
    common: list[str]
    data: str


TINY = f"{DEVDATA}/tiny_imagenet"
CAMPAIGNS = {
    "text8_prefix": Campaign(
        "text8_prefix.txt",
        ["dataset=chars", f"dataset.paths=[{DEVDATA}/{TEXT8_PREFIX}]", "optim.epochs=20",
         "optim.schedule=linear", *RUN_FLAGS, "trainer.eval_every=22",
         "trainer.eval_batch_size=1024"],
        f"{DEVDATA}/text8_prefix"),
    "tiny_imagenet": Campaign(  # the first image campaign: 8,636 validation images train
        "tiny_imagenet.txt",
        ["experiment=tiny_imagenet32_monarch_hclt",
         f"dataset.train={TINY}/tiny-imagenet-200_val.tar.xz", "dataset.test=null",
         "dataset.cache=null", *RUN_FLAGS],
        TINY),
    "tiny_imagenet_full": Campaign(  # all the training images; dev and test: val halves
        "tiny_imagenet_full.txt",
        ["experiment=tiny_imagenet32_monarch_hclt",
         f"dataset.train={TINY}/tiny-imagenet-200_train-first100.tar.xz",
         f"dataset.test={TINY}/tiny-imagenet-200_val.tar.xz", "dataset.dev_from=test",
         "dataset.dev_fraction=0.5", "dataset.cache=null", *RUN_FLAGS],
        TINY),
}


@dataclass(frozen=True)
class Batch:
    """Jobs of one campaign run together on one GPU, ``per_gpu`` at a time, in order.

    ``jobs``: (name, estimated process seconds under this sharing); ``basis``: how the
    estimates were made; ``calls``: device calls it needs by the estimate (more than one:
    the same command again on the warm machine resumes what the deadline stopped)."""

    id: str
    part: str
    campaign: str
    per_gpu: int
    jobs: list[tuple[str, float]]
    basis: str
    calls: int = 1
    notes: list[str] = field(default_factory=list)


# Part 1: the reruns of the 14 runs scored by truncating TF32 products, in the groupings the
# committed campaigns ran them (runs/<campaign>/campaign-*.log), so each job's recorded
# process seconds under that sharing is its estimate.
# Part 2: new sizes, each alone on its GPU. Estimate = the nearest committed run of its kind
# that ran alone (jobs_per_gpu 1): its process seconds + its training seconds (final
# wall_time) x (multiply-adds ratio - 1), + dense factor runs it lacked; an upper bound, as
# the H200 runs larger sizes at more multiply-adds a second (device/bench_h200_bf16.jsonl:
# a bench-based estimate is given beside it).
# Part 3: the first image campaign's jobs on 20,200 training images: the recorded process
# seconds of the same model and image size (same sharing) x the ratio of (updates +
# evaluation cost in update-equivalents: dev and test forward passes, a third of an E-step a
# patch) between the two campaigns: 32 px (204 + 35) / (138 + 8) = 1.64, 64 px
# (390 + 75) / (221 + 27) = 1.88.
RERUN = "the original's recorded process seconds in the same grouping ({log})"
BATCHES = [
    Batch("P1-a", "1", "text8_prefix", 3,
          [("b2-monarch3-h4096", 190), ("b2-monarch3-h8192", 238), ("b2-monarch4-h4096", 222)],
          RERUN.format(log="campaign-1744.log")),
    Batch("P1-b", "1", "text8_prefix", 2,
          [("b2-monarch4-h8192", 288), ("b2-monarch4-h16384", 372)],
          RERUN.format(log="campaign-1926.log")),
    Batch("P1-c", "1", "text8_prefix", 2,
          [("b2-monarch3-h16384", 398), ("b2-monarch4-h2048", 388)],
          RERUN.format(log="campaign-1934.log")),
    Batch("P1-d", "1", "text8_prefix", 1, [("b2-monarch3-h32768", 382)],
          RERUN.format(log="campaign-1734.log")),
    Batch("P1-e", "1", "tiny_imagenet", 3,
          [("im32-monarch-hclt-h4096", 324), ("im64-monarch-hclt-h1024", 216),
           ("im32-monarch-hclt-h1024", 116)],
          RERUN.format(log="campaign-1919.log, campaign-1926.log")),
    Batch("P1-f", "1", "tiny_imagenet", 3,
          [("im64-monarch-hclt-h4096", 366), ("im64-monarch-hclt-h256", 128),
           ("im32-monarch-hclt-h256", 76)],
          RERUN.format(log="campaign-1926.log, campaign-1934.log")),
    Batch("P2-a", "2", "text8_prefix", 1, [("t2-random-h65536", 593)],
          "b2-monarch2-h32768: 310 s + 203 s x (33.6M / 12.6M madds - 1), less its 56 s of "
          "factor runs; bench-based ~380 s (711k tokens/s at h = 2^16)", calls=2),
    Batch("P2-b", "2", "text8_prefix", 1, [("t2-multiply-h65536", 655)],
          "as P2-a, with two dense factor runs of h = 256 (~60 s); bench-based ~440 s",
          calls=2),
    Batch("P2-c", "2", "text8_prefix", 1, [("b2-hmm-h16384", 725)],
          "b2-hmm-h8192: 204 s + 174 s x (4 - 1); bench-based ~800 s (302k tokens/s)",
          calls=2),
    Batch("P2-d", "2", "text8_prefix", 1, [("b2-monarch3-h65536", 850)],
          "b2-monarch3-h32768: 382 s + 271 s x (8.4M / 3.1M madds - 1), + a factor of 64; "
          "bench-based ~450 s", calls=2),
    Batch("P2-e", "2", "text8_prefix", 1, [("b2-monarch2-h131072", 1765)],
          "b2-monarch2-h32768: 310 s + 203 s x (100.7M / 12.6M madds - 1), + a factor of 512; "
          "bench-based ~950 s (about 285k tokens/s between h = 2^16 and 2^18)", calls=4,
          notes=["start it on a fresh machine: a machine goes back after 30 minutes held, "
                 "so at most three 9-minute calls resume one another; by the bench-based "
                 "estimate two suffice"]),
    Batch("P3-a", "3", "tiny_imagenet_full", 3,
          [("full32-monarch-hclt-h4096", 531), ("full32-monarch-hclt-h1024", 190),
           ("full32-hclt-h512", 134), ("full32-hclt-h256", 102)],
          "im32-* x 1.64", calls=2,
          notes=["Monarch-HCLT h = 4096 may pass the deadline (upper bound: the original "
                 "shared its GPU three ways); if so, run P3-a again on the warm machine"]),
    Batch("P3-b", "3", "tiny_imagenet_full", 3,
          [("full64-monarch-hclt-h4096", 688), ("full64-hclt-h512", 214),
           ("full64-hclt-h128", 271)],
          "im64-* x 1.88", calls=2),
    Batch("P3-c", "3", "tiny_imagenet_full", 3,
          [("full64-monarch-hclt-h1024", 406), ("full64-hclt-h256", 274),
           ("full64-monarch-hclt-h256", 241), ("full32-hclt-h128", 108),
           ("full32-monarch-hclt-h256", 125)],
          "im64-* x 1.88, im32-* x 1.64"),
]
BY_ID = {b.id: b for b in BATCHES}


def makespan(batch: Batch) -> float:
    """Expected wall seconds of a batch: its jobs in order on ``per_gpu`` slots, each
    starting when a slot frees (what lab/campaign.py does on one GPU)."""
    slots = [0.0] * batch.per_gpu
    for _, seconds in batch.jobs:
        i = slots.index(min(slots))
        slots[i] += seconds
    return max(slots)


def jobs_file(campaign: Campaign) -> Path:
    return REPO / CAMPAIGN_DIR / campaign.jobs


def job_lines(campaign: Campaign) -> dict[str, list[str]]:
    """name -> overrides of every job of the campaign's jobs file (without the common ones)."""
    out = {}
    for line in jobs_file(campaign).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, rest = line.partition(":")
            out[name.strip()] = shlex.split(rest)
    return out


def check_batches() -> None:
    """Every batch names jobs of its jobs file, and no job is in two batches."""
    seen: set[tuple[str, str]] = set()
    for b in BATCHES:
        names = job_lines(CAMPAIGNS[b.campaign])
        for job, _ in b.jobs:
            if job not in names:
                raise SystemExit(f"batch {b.id}: no job {job} in {CAMPAIGNS[b.campaign].jobs}")
            if (b.campaign, job) in seen:
                raise SystemExit(f"batch {b.id}: job {job} is in another batch too")
            seen.add((b.campaign, job))


# ------------------------------------------------------------------------------- list

def cmd_list() -> None:
    """The plan as a Markdown table (docs/results/campaigns/PLAN.md holds a copy)."""
    check_batches()
    print("| batch | part | campaign | jobs (estimated process s) | per GPU | expected wall s "
          "| calls | carry |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    total = 0.0
    for b in BATCHES:
        jobs = ", ".join(f"{n} ({s:.0f})" for n, s in b.jobs)
        wall = makespan(b)
        total += wall
        print(f"| {b.id} | {b.part} | {b.campaign} | {jobs} | {b.per_gpu} | {wall:.0f} | "
              f"{b.calls} | {DEVSITE}, {CAMPAIGNS[b.campaign].data} |")
    print(f"\n{len(BATCHES)} batches, {sum(b.calls for b in BATCHES)} calls by the estimates, "
          f"{total / 60:.0f} GPU-minutes of expected wall time")


# ------------------------------------------------------------------------------- prep

def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cmd_prep(shared: Path) -> None:
    """Build what the device calls carry: .devdata (the text8 prefix as is; the Tiny
    ImageNet tars, checked against their PROVENANCE.md sha256, as .tar.xz: xz -6 of the
    exact tar, so that both fit the 64 MiB a call carries) and .devsite (the pure-Python
    packages a run imports that the device image lacks, copied from this environment)."""
    if not (shared / TEXT8_PREFIX).is_file():
        raise SystemExit(f"{shared / TEXT8_PREFIX} not found: pass --shared <the shared data "
                         f"folder> (the one holding text8_prefix/ and tiny_imagenet/)")
    text8 = REPO / DEVDATA / TEXT8_PREFIX
    text8.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shared / TEXT8_PREFIX, text8)
    tiny = REPO / TINY
    tiny.mkdir(parents=True, exist_ok=True)
    for name, digest in TINY_TARS.items():
        source, packed = shared / "tiny_imagenet" / name, tiny / f"{name}.xz"
        if sha256(source) != digest:
            raise SystemExit(f"{source}: sha256 differs from its PROVENANCE.md; not packed")
        if not packed.is_file():
            with open(packed, "wb") as out:
                subprocess.run(["xz", "-6", "-T1", "-c", str(source)], stdout=out, check=True)
        print(f"{packed.relative_to(REPO)}: {packed.stat().st_size:,} bytes ({name}, sha256 "
              f"{digest[:12]} once decompressed)")
    site = REPO / DEVSITE
    for package in SITE_PACKAGES:
        module = __import__(package)
        source = Path(module.__file__).parent
        shutil.copytree(source, site / package, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    print(f"{DEVSITE}: {', '.join(SITE_PACKAGES)}")
    for b in BATCHES:
        paths = [REPO / DEVSITE, REPO / CAMPAIGNS[b.campaign].data]
        size = sum(f.stat().st_size for p in paths for f in p.rglob("*") if f.is_file())
        print(f"{b.id}: carry {DEVSITE}, {CAMPAIGNS[b.campaign].data}: {size / 2**20:.1f} MiB "
              f"(+ the working tree; 64 MiB a call)")


# -------------------------------------------------------------------------------- run

def campaign_command(batch: Batch, deadline: float, work: Path) -> list[str]:
    """The lab/campaign.py invocation of one batch (one GPU: CUDA_VISIBLE_DEVICES)."""
    c = CAMPAIGNS[batch.campaign]
    return [sys.executable, str(REPO / "lab" / "campaign.py"),
            "--jobs", str(jobs_file(c)), "--common", shlex.join(c.common),
            "--only", ",".join(n for n, _ in batch.jobs), "--gpus", "1",
            "--per-gpu", str(batch.per_gpu), "--deadline", str(deadline),
            "--out", str(work / "campaign" / batch.campaign),
            "--export", str(work / "export" / batch.campaign)]


def cmd_run(ids: list[str], deadline: float, work: Path = REPO / "outputs") -> None:
    """Run the batches side by side, one GPU each, in ``work``/campaign/<campaign>; pack
    what finished into $OUT (default ``work``/batches)."""
    batches = [BY_ID[i] for i in ids]
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
               if d.strip()]
    if not visible:
        import torch  # only here: the device image has it

        visible = [str(i) for i in range(torch.cuda.device_count())]
    if len(batches) > len(visible):
        raise SystemExit(f"{len(batches)} batches but {len(visible)} GPUs: one batch a GPU")
    out = Path(os.environ.get("OUT") or work / "batches")
    out.mkdir(parents=True, exist_ok=True)
    export = work / "export"
    shutil.rmtree(export, ignore_errors=True)  # only this call's runs travel back
    env = dict(os.environ, PYTHONUNBUFFERED="1", NCCL_NVLS_ENABLE="0",
               PYTHONPATH=os.pathsep.join([str(REPO / DEVSITE), str(REPO),
                                           os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    procs = []
    for batch, gpu in zip(batches, visible, strict=False):
        log = open(out / f"campaign-{batch.id}.log", "w")  # noqa: SIM115  (closed below)
        procs.append((batch, log, subprocess.Popen(
            campaign_command(batch, deadline, work), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            env={**env, "CUDA_VISIBLE_DEVICES": gpu})))
        print(f"{batch.id} on GPU {gpu}: {', '.join(n for n, _ in batch.jobs)}", flush=True)
    for batch, log, proc in procs:
        proc.wait()
        log.close()
        print(f"--- {batch.id} (exit {proc.returncode})\n"
              + (out / f"campaign-{batch.id}.log").read_text(), flush=True)
    if export.is_dir() and any(export.rglob("run.json")):
        with tarfile.open(out / "records.tar.gz", "w:gz") as tar:
            for campaign in sorted(p for p in export.iterdir() if p.is_dir()):
                tar.add(campaign, arcname=campaign.name)
        print(f"records of {sum(1 for _ in export.rglob('run.json'))} finished runs in "
              f"records.tar.gz")
    else:
        print("no run finished in this call: nothing to land")


# ------------------------------------------------------------------------------- land

def cmd_land(folder: Path, runs: Path = REPO / "docs" / "results" / "runs") -> None:
    """Unpack a call's records.tar.gz into ``runs``/<campaign>/ (a run's folder is replaced
    by the one that came back) and put each campaign-<batch>.log beside its records."""
    packed = folder / "records.tar.gz"
    if packed.is_file():
        with tarfile.open(packed) as tar:
            members = tar.getmembers()
            bad = [m.name for m in members if m.name.startswith("/") or ".." in m.name
                   or not (m.isfile() or m.isdir())]
            if bad:
                raise SystemExit(f"{packed}: unexpected members {bad[:3]}; not unpacked")
            for run_dir in {Path(m.name).parts[:2] for m in members if len(Path(m.name).parts)
                            > 2}:
                shutil.rmtree(runs.joinpath(*run_dir), ignore_errors=True)  # the rerun replaces
            tar.extractall(runs, filter="data")
            landed = sorted({"/".join(Path(m.name).parts[:2]) for m in members
                             if Path(m.name).name == "run.json"})
        print("landed: " + ", ".join(landed))
    for log in sorted(folder.glob("campaign-*.log")):
        batch = BY_ID.get(log.stem.removeprefix("campaign-"))
        if batch is not None:
            (runs / batch.campaign).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, runs / batch.campaign / log.name)
            print(f"{log.name} -> {runs.name}/{batch.campaign}/")
    print("next: make results, then commit docs/results (docs/results/campaigns/PLAN.md)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the batches, their jobs and estimates")
    prep = sub.add_parser("prep", help="build .devdata and .devsite to carry")
    prep.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    run = sub.add_parser("run", help="on the device: run batches, one GPU each")
    run.add_argument("ids", nargs="+", choices=sorted(BY_ID))
    run.add_argument("--deadline", type=float, default=DEADLINE)
    land = sub.add_parser("land", help="unpack a call's records into docs/results/runs")
    land.add_argument("folder", type=Path)
    args = p.parse_args()
    if args.cmd == "list":
        cmd_list()
    elif args.cmd == "prep":
        cmd_prep(args.shared)
    elif args.cmd == "run":
        cmd_run(args.ids, args.deadline)
    else:
        cmd_land(args.folder)


if __name__ == "__main__":
    main()
