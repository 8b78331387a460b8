"""Benchmarks and profiles, one command: ``python -m monarchpc.bench TOOL [options]``.

| tool | what it measures | make target |
| --- | --- | --- |
| hmm | HMM E-step and EM-update throughput, fused vs autograd checks, GPU ceilings | make bench |
| hclt | HCLT E-step throughput, beside PyJuice when it is installed | make bench-hclt |
| kernels | the Monarch layer-product kernels against cuBLAS | |
| elements | the HMM E-step's element-wise kernels | |
| profile | where one E-step's time goes (torch.profiler) | make profile |
| ddp | data-parallel training, 1 vs 2 GPUs | make bench-ddp |
| precision | one preset trained in fp32, tf32 and bf16, and its fp32 model scored in each | |
| flows | bias and error of bf16 / TF32 log p and flows of HCLTs | |
| recipe | a preset's steady-state EM updates in the training loop | make bench-recipe |
| reference | the reference code's HMM E-step beside ours, one run | make bench-reference |
| compression | lossless compression beside gzip, bzip2, xz, zstd, PNG, WebP | |

``TOOL --help`` lists a tool's options; ``--tiny`` runs small cases on the CPU. Results are
JSON lines on stdout and in ``outputs/bench/`` (``--record``: ``docs/results/device/``,
where the records the docs cite live). What the numbers are: docs/performance.md.
"""

from __future__ import annotations

import importlib
import sys

TOOLS = ("hmm", "hclt", "kernels", "elements", "profile", "ddp", "precision", "flows", "recipe",
         "reference", "compression")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in TOOLS:
        print(__doc__)
        sys.exit(0 if argv[:1] in ([], ["-h"], ["--help"]) else 2)
    tool, rest = argv[0], argv[1:]
    sys.argv = [f"python -m monarchpc.bench {tool}", *rest]  # for the tools' --help
    importlib.import_module(f"monarchpc.bench.{tool}").main(rest)


if __name__ == "__main__":
    main()
