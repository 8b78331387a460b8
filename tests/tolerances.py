"""Measure the errors that the E-step tests bound: ``python -m tests.tolerances``.

Runs the cases of tests/learning/test_hmm_estep.py and test_hclt_estep.py (fused E-steps
in fp32, bf16, fp16 and TF32 against float64 autograd on the same parameters) and prints a
markdown table: per group of cases the largest error of log p (fp32: relative to
max(|log p|, 1); 16-bit and TF32: nats), of a flow relative to itself (every element above
``FLOW_FLOOR``) and the largest absolute error of the flows at or below it, beside the
bound the tests use (tests/helpers.py: about 10x the fp32 error; 16-bit and TF32 bands from
the operands' rounding). Triton cases run through the interpreter (TRITON_INTERPRET=1).
"""

from __future__ import annotations

import functools
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import torch

from monarchpc.learning import hclt_estep as hclt_module
from monarchpc.learning.em import accumulate_flows
from monarchpc.learning.hidden_major import HiddenMajor
from monarchpc.learning.hmm_estep import hmm_estep
from tests import helpers as h


def errors(fast: torch.nn.Module, ref: torch.nn.Module, ll: torch.Tensor,
           ll_ref: torch.Tensor, relative: bool) -> tuple[float, float, float]:
    """(log p error, flow relative above FLOW_FLOOR, flow absolute at or below it)."""
    err = (ll.double() - ll_ref).abs()
    ll_err = float((err / ll_ref.abs().clamp_min(1.0) if relative else err).max())
    rel, small = 0.0, 0.0
    for f, r in h.flow_pairs(fast, ref):
        diff, big = (f - r).abs(), r > h.FLOW_FLOOR
        if big.any():
            rel = max(rel, float((diff[big] / r[big]).max()))
        if (~big).any():
            small = max(small, float(diff[~big].max()))
    return ll_err, rel, small


def hmm_cases():
    """(group, bound of log p, bound of a flow, (fast, ref, ll, ll_ref)) of every HMM case."""
    from tests.learning import test_hmm_estep as t

    def case(kind, x, **settings):
        ref, fast = t.twins(kind)
        ll_ref = accumulate_flows(ref, x)
        return fast, ref, hmm_estep(fast, x, **settings), ll_ref

    fp32 = (h.FP32_LL_RTOL, h.FP32_FLOW_RTOL)
    for kind in sorted(t.BLOCKS):
        for segment, _ in t.SEGMENTS:
            x = torch.randint(0, 5, (6, 7), generator=torch.Generator().manual_seed(1))
            x[2, 4] = 4
            yield "HMM fp32, PyTorch kernels", *fp32, case(
                kind, x, segment=segment, precision="fp32", kernels="torch", products="torch")
        x = torch.randint(0, 5, (7, 15), generator=torch.Generator().manual_seed(4))
        x[1, 3] = 4
        yield "HMM fp32, PyTorch kernels", *fp32, case(kind, x, segment=4, kernels="torch")
        yield "HMM fp32, Triton element kernels", h.FP32_LL_RTOL, h.TRITON_FLOW_RTOL, case(
            kind, x, segment=4, kernels="triton")
    for kind in ("dense", "monarch3", "monarch4-unequal"):
        x = torch.randint(0, 5, (7, 15), generator=torch.Generator().manual_seed(7))
        x[1, 3] = 4
        yield "HMM fp32, Triton element kernels", h.FP32_LL_RTOL, h.TRITON_FLOW_RTOL, case(
            kind, x, segment=4, kernels="triton", products="triton")
    for low in t.LOW_PRECISION:
        kind, precision, products = low.values if hasattr(low, "values") else low
        x = torch.randint(0, 5, (6, 20), generator=torch.Generator().manual_seed(3))
        got = case(kind, x, segment=5, precision=precision, kernels="torch", products=products)
        bands = h.rounding_bands(precision, len(got[0].transition.layers), x.shape[1] - 1)
        yield f"HMM {precision} ({products} products)", *bands, got


def hclt_cases():
    """As :func:`hmm_cases`, for the HCLT."""
    from tests.learning import test_hclt_estep as t

    def case(kind, tied, x, precision, kernels, parent=None, vocab=t.VOCAB):
        ref, fast = t.twins(kind, tied, parent, vocab)
        ll_ref = accumulate_flows(ref, x)
        return fast, ref, hclt_module.hclt_estep(fast, x, precision, kernels=kernels), ll_ref

    fp32 = (h.FP32_LL_RTOL, h.FP32_FLOW_RTOL)
    for kind in sorted(t.BLOCKS):
        for tied in (False, True):
            for kernels in ("torch", "triton"):
                yield f"HCLT fp32, {kernels} kernels", *fp32, case(
                    kind, tied, t.rows(t.VOCAB, 13, 1), "fp32", kernels)
    vocab = [40] * 60
    for parent in (np.arange(-1, 59), np.array([-1] + [0] * 29 + list(range(1, 31)))):
        yield "HCLT fp32, 60 variables", h.DEEP_FP32_RTOL, h.DEEP_FP32_RTOL, case(
            "monarch3", False, t.rows(vocab, 6, 5), "fp32", "torch", parent, vocab)
    plain = hclt_module.HiddenMajor
    for low in t.LOW_PRECISION:
        kind, precision, products = low.values if hasattr(low, "values") else low
        hclt_module.HiddenMajor = functools.partial(HiddenMajor, products=products)
        got = case(kind, True, t.rows(t.VOCAB, 13, 6), precision, products)
        hclt_module.HiddenMajor = plain
        bands = h.rounding_bands(precision, len(got[0].blocks.layers), len(t.VOCAB) - 1)
        yield f"HCLT {precision} ({products} products)", *bands, got


def main() -> None:
    torch.set_num_threads(1)
    table: dict[str, list[float]] = {}
    for cases in (hmm_cases(), hclt_cases()):
        for name, ll_bound, flow_bound, (fast, ref, ll, ll_ref) in cases:
            got = errors(fast, ref, ll, ll_ref, relative="fp32" in name)
            # the smallest band of the group (its cases differ in layers)
            old = table.get(name, [0.0, 0.0, 0.0, np.inf, np.inf])
            table[name] = [*(max(a, b) for a, b in zip(old[:3], got, strict=True)),
                           min(old[3], ll_bound), min(old[4], flow_bound)]
    print(f"| cases | log p: measured | log p: bound | flow rel (F > {h.FLOW_FLOOR:g}): "
          f"measured | flow rel: bound | flow abs (F <= {h.FLOW_FLOOR:g}) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, (ll_err, rel, small, ll_bound, flow_bound) in table.items():
        unit = " rel" if "fp32" in name else " nats"
        print(f"| {name} | {ll_err:.2e}{unit} | {ll_bound:.1e}{unit} | {rel:.2e} | "
              f"{flow_bound:.1e} | {small:.1e} |")


if __name__ == "__main__":
    main()
