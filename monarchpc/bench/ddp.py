"""Data parallel throughput: training tokens/s with 1 and with N GPUs, and whether the ranks
still hold identical parameters after the last update.

    NCCL_NVLS_ENABLE=0 python -m monarchpc.bench ddp --gpus 1 2   # outputs/bench/ddp.json

Each world size is one real training run (``python -m monarchpc.train``; torchrun when
N > 1) of a Monarch-2 HMM (default h = 2^19 = 512 x 1024, vocabulary 27, rows of 256) on
synthetic rows, ``--batch-per-gpu`` rows per GPU per update (the global micro-batch is
N times that), ``--updates`` EM updates, evaluation on 128 rows every ``--updates // 2``
updates. Throughput is read from the run's ``metrics.jsonl`` (tokens and training wall
time at each evaluation, evaluation time excluded): ``tokens_per_s`` over the second half
of the updates (after warm-up) and ``tokens_per_s_all`` over all of them. The final
checkpoint's ``run.json`` holds ``rank_divergence``: the largest |theta_rank - theta_0| over
all parameters and ranks, measured after the last update (0.0 = identical).

Extra Hydra overrides go after ``--``, e.g. ``-- trainer.precision=fp32``. ``--device cpu
--hidden 64`` gives a CPU smoke test (gloo).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def overrides(args: argparse.Namespace, gpus: int, out: Path, name: str) -> list[str]:
    """Hydra overrides of the run with ``gpus`` ranks."""
    batch = args.batch_per_gpu * gpus
    factors = args.factors or [2 ** (int(math.log2(args.hidden)) // 2),
                               args.hidden // 2 ** (int(math.log2(args.hidden)) // 2)]
    return [
        "logger=none", "trainer.progress=false", f"trainer.device={args.device}",
        "dataset=synthetic", "dataset.vocab_size=27", f"dataset.seq_len={args.seq_len}",
        f"dataset.n_train={batch * args.updates}", "dataset.n_dev=128", "dataset.n_test=128",
        "dataset.long_rows=8",
        "model=monarch2_hmm", f"model.hidden_size={args.hidden}",
        f"model.factors=[{factors[0]},{factors[1]}]",
        f"optim.batch_size={batch}", "optim.accumulate=1", "optim.epochs=1",
        f"trainer.precision={args.precision}", "trainer.eval_at_start=false",
        f"trainer.eval_every={max(args.updates // 2, 1)}", "trainer.eval_batch_size=64",
        "trainer.long_eval=never", f"paths.output_dir={out}", f"run_name={name}",
        *args.extra,
    ]


def bench(args: argparse.Namespace, gpus: int, out: Path) -> dict[str, Any]:
    """Train once with ``gpus`` ranks; its throughput and rank divergence."""
    name = f"bench-ddp-{gpus}gpu-{time.strftime('%Y%m%d-%H%M%S')}"
    launch = [sys.executable, "-m", "monarchpc.train"] if gpus == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={gpus}", "-m", "monarchpc.train"]
    env = dict(os.environ, NCCL_NVLS_ENABLE=os.environ.get("NCCL_NVLS_ENABLE", "0"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
                                                        os.environ.get("PYTHONPATH")])))
    if args.device == "cpu":
        env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [*launch, *overrides(args, gpus, out, name)]
    print("$", " ".join(cmd), flush=True)
    log_path = out / f"{name}.log"
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    result: dict[str, Any] = {"gpus": gpus, "command": cmd, "log": str(log_path),
                              "returncode": proc.returncode}
    run_dir = out / name
    if proc.returncode != 0 or not (run_dir / "metrics.jsonl").is_file():
        result["error"] = log_path.read_text()[-3000:]
        return result
    recs = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    info = json.loads((run_dir / "run.json").read_text())
    first, last = recs[0], recs[-1]
    result.update(
        run_dir=str(run_dir), updates=last["update"], tokens=last["tokens"],
        train_seconds=last["wall_time"],
        tokens_per_s_all=last["tokens"] / last["wall_time"],
        tokens_per_s=((last["tokens"] - first["tokens"]) / (last["wall_time"] - first["wall_time"])
                      if len(recs) > 1 else None),
        rank_divergence=info.get("rank_divergence"), world_size=info.get("world_size"),
        status=info["status"], device=info["device"],
        peak_gpu_memory_bytes=info["peak_gpu_memory_bytes"],
        madds_per_token=info["madds_per_token"], final_dev_bpc=last.get("dev_bpc"))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--hidden", type=int, default=2 ** 19)
    parser.add_argument("--factors", type=int, nargs=2, default=None)
    parser.add_argument("--batch-per-gpu", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--precision", default="tf32")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/ddp.json"))
    parser.add_argument("--runs-dir", type=Path, default=None,
                        help="where the run directories go (default: beside --out)")
    parser.add_argument("extra", nargs="*", help="Hydra overrides (after --)")
    args = parser.parse_args(argv)
    out = (args.runs_dir or args.out.resolve().parent / "bench_ddp_runs").resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = [bench(args, g, out) for g in args.gpus]
    base = next((r for r in results if r["gpus"] == 1 and r.get("tokens_per_s")), None)
    for r in results:
        if base and r.get("tokens_per_s"):
            r["speedup_vs_1gpu"] = r["tokens_per_s"] / base["tokens_per_s"]
    report = {"hidden_size": args.hidden, "batch_per_gpu": args.batch_per_gpu,
              "seq_len": args.seq_len, "updates": args.updates, "precision": args.precision,
              "host": platform.node(), "nccl_nvls_enable": os.environ.get("NCCL_NVLS_ENABLE", "0"),
              "results": results}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for r in results:
        if "error" in r:
            print(f"{r['gpus']} GPU(s): FAILED (rc {r['returncode']}), see {r['log']}")
        else:
            print(f"{r['gpus']} GPU(s): {r['tokens_per_s'] or r['tokens_per_s_all']:,.0f} "
                  f"tokens/s ({r['tokens_per_s_all']:,.0f} over all {r['updates']} updates), "
                  f"speedup {r.get('speedup_vs_1gpu', float('nan')):.2f}, max |theta_rank - "
                  f"theta_0| after update {r['updates']}: {r['rank_divergence']}")
    print(f"wrote {args.out}")
    sys.exit(0 if all("error" not in r for r in results) else 1)


if __name__ == "__main__":
    main()
