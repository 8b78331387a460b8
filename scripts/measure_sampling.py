"""Time sampling from a run's checkpoint; write sampling_seconds_per_sequence to run.json.

    python scripts/measure_sampling.py --run outputs/<run> [--n 128 --length 256]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from monarchpc.reports.measure import measure_sampling


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", nargs="+", required=True, help="run director(y/ies)")
    p.add_argument("--n", type=int, default=128, help="sequences per timed batch")
    p.add_argument("--length", type=int, default=None,
                   help="sequence length (default: the run's dataset.seq_len)")
    p.add_argument("--repeats", type=int, default=3, help="timed batches (median is kept)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    args = p.parse_args()
    for run in args.run:
        r = measure_sampling(run, n=args.n, length=args.length, repeats=args.repeats,
                             device=args.device)
        print(f"{run}: {r['seconds_per_sequence']:.3g} s per sequence "
              f"(n={r['n']}, length={r['length']}, {r['device']}); "
              f"wrote {Path(run) / 'run.json'}")


if __name__ == "__main__":
    main()
