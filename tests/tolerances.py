"""Measure the errors that the E-step tests bound: ``python -m tests.tolerances``.

Runs the cases of tests/learning/test_hmm_estep.py and test_hclt_estep.py (fused E-steps
in fp32, bf16, fp16 and TF32 against float64 autograd on the same parameters) and prints,
per group of cases, the largest error of log p relative to |log p| and the largest error
of a flow relative to that flow (|F - F64| / F64, every element whose flow exceeds
``FLOOR``), and the largest absolute error of the flows at or below it. The bounds in
tests/helpers.py (``FP32_LL_RTOL`` and the others) were set from this output: about 10x
the largest fp32 error; 16-bit bands from their rounding units. Triton cases run through
the interpreter (TRITON_INTERPRET=1), so this takes a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from monarchpc.learning.em import accumulate_flows, flows  # noqa: E402
from monarchpc.learning.hclt_estep import hclt_estep  # noqa: E402
from monarchpc.learning.hmm_estep import hmm_estep  # noqa: E402
from tests.helpers import FLOW_FLOOR as FLOOR  # noqa: E402


def errors(fast: torch.nn.Module, ref: torch.nn.Module, ll: torch.Tensor,
           ll_ref: torch.Tensor) -> tuple[float, float, float]:
    """(log p relative, flow relative above FLOOR, flow absolute at or below FLOOR)."""
    ll_rel = float(((ll.double() - ll_ref).abs() / ll_ref.abs().clamp_min(1.0)).max())
    rel, small, allrel = 0.0, 0.0, 0.0
    for p, q in zip(fast.parameters(), ref.parameters(), strict=True):
        f, r = flows(p).double(), flows(q).double()
        err = (f - r).abs()
        big = r > FLOOR
        if big.any():
            rel = max(rel, float((err[big] / r[big]).max()))
        if (~big).any():
            small = max(small, float(err[~big].max()))
        pos = r > 0
        allrel = max(allrel, float((err[pos] / r[pos]).max()))
    print(f"   all-positive rel {allrel:.2e}, smallest flow {min(float(flows(q)[flows(q) > 0].min()) for q in ref.parameters()):.1e}")
    return ll_rel, rel, small


def hmm_cases():
    from tests.learning import test_hmm_estep as t

    def case(kind, x, **settings):
        ref, fast = t.twins(kind)
        ref = ref.double()
        ll_ref = accumulate_flows(ref, x)
        ll = hmm_estep(fast, x, **settings)
        return fast, ref, ll, ll_ref

    for kind in sorted(t.BLOCKS):
        for segment, kept in t.SEGMENTS:
            x = torch.randint(0, 5, (6, 7), generator=torch.Generator().manual_seed(1))
            x[2, 4] = 4
            yield "hmm fp32 torch", case(kind, x, segment=segment, precision="fp32",
                                         kernels="torch", products="torch")
        x = torch.randint(0, 5, (7, 15), generator=torch.Generator().manual_seed(4))
        x[1, 3] = 4
        for kernels in ("torch", "triton"):
            yield f"hmm fp32 {kernels}", case(kind, x, segment=4, precision="fp32",
                                              kernels=kernels)
    for kind in ("dense", "monarch3", "monarch4-unequal"):
        x = torch.randint(0, 5, (7, 15), generator=torch.Generator().manual_seed(7))
        x[1, 3] = 4
        yield "hmm fp32 triton", case(kind, x, segment=4, precision="fp32", kernels="triton",
                                      products="triton")
    for kind in sorted(t.BLOCKS):
        x = torch.randint(0, 5, (6, 20), generator=torch.Generator().manual_seed(3))
        yield "hmm bf16 torch", case(kind, x, segment=5, precision="bf16", kernels="torch")
        yield "hmm fp16 torch", case(kind, x, segment=5, precision="fp16", kernels="torch")
    for kind in ("dense", "monarch3", "monarch4-unequal"):
        x = torch.randint(0, 5, (6, 20), generator=torch.Generator().manual_seed(3))
        yield "hmm tf32 triton", case(kind, x, segment=5, precision="tf32", kernels="triton",
                                      products="triton")


def hclt_cases():
    from tests.learning import test_hclt_estep as t

    def case(kind, tied, x, precision, kernels, parent=None, vocab=t.VOCAB):
        ref, fast = t.twins(kind, tied, parent, vocab)
        ll_ref = accumulate_flows(ref, x)
        ll = hclt_estep(fast, x, precision, kernels=kernels)
        return fast, ref, ll, ll_ref

    for kind in sorted(t.BLOCKS):
        for tied in (False, True):
            for kernels in ("torch", "triton"):
                yield f"hclt fp32 {kernels}", case(kind, tied, t.rows(t.VOCAB, 13, 1), "fp32",
                                                   kernels)
    vocab = [40] * 60
    for parent in (np.arange(-1, 59), np.array([-1] + [0] * 29 + list(range(1, 31)))):
        yield "hclt fp32 torch (60 variables)", case("monarch3", False, t.rows(vocab, 6, 5),
                                                     "fp32", "torch", parent, vocab)
    for kind in sorted(t.BLOCKS):
        for precision in ("bf16", "fp16"):
            yield f"hclt {precision} torch", case(kind, True, t.rows(t.VOCAB, 13, 6),
                                                  precision, "torch")
        yield "hclt tf32 triton", case(kind, True, t.rows(t.VOCAB, 13, 6), "tf32", "triton")


def main() -> None:
    torch.set_num_threads(1)
    table: dict[str, list[float]] = {}
    for cases in (hmm_cases(), hclt_cases()):
        for name, (fast, ref, ll, ll_ref) in cases:
            got = errors(fast, ref, ll, ll_ref)
            table[name] = [max(a, b) for a, b in zip(table.get(name, [0, 0, 0]), got,
                                                      strict=True)]
    print(f"| cases | log p rel | flow rel (F > {FLOOR:g}) | flow abs (F <= {FLOOR:g}) |")
    print("| --- | --- | --- | --- |")
    for name, (a, b, c) in table.items():
        print(f"| {name} | {a:.2e} | {b:.2e} | {c:.2e} |")


if __name__ == "__main__":
    main()
