"""Test helpers: compose the project's Hydra config as the CLI would; exact circuits."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

import monarchpc.train  # noqa: F401  (registers the repo_root resolver)
from monarchpc.paths import REPO_ROOT

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
TEXT8_PREFIX = SHARED_DATA / "text8_prefix" / "text8_first12500000.xz"


def real_data(path: Path, what: str) -> Path:
    """``path``, a file of the real data in ../shared/data, or skip the test: such tests are
    extra checks beside ones on data made in the repository. Where MONARCHPC_REQUIRE_DATA=1
    (CI, which has ../shared beside the clone) a missing file fails the test instead."""
    import os

    import pytest

    if not path.is_file():
        message = f"{what} not found at {path}"
        if os.environ.get("MONARCHPC_REQUIRE_DATA") == "1":
            pytest.fail(f"{message}, and MONARCHPC_REQUIRE_DATA=1: put ../shared/data beside "
                        f"the repository", pytrace=False)
        pytest.skip(message)
    return path


def english_lines() -> list[str]:
    """2,626 lines of English prose from Python's help texts (``pydoc_data.topics``, which
    ships with every CPython), topics in sorted order: the non-blank lines, stripped, of
    4 words or more and only letters, spaces and ,.;:'()- (no code, so a tokenizer trained
    on a few hundred of them covers the characters of the next). The token-level tests run
    on them without data from outside the repository."""
    import re
    from pydoc_data.topics import topics

    prose = re.compile(r"[A-Za-z ,.;:'()-]+")
    return [s.strip() for name in sorted(topics) for s in topics[name].splitlines()
            if prose.fullmatch(s.strip()) and len(s.split()) >= 4]


def compose_config(overrides: list[str], run_dir: Path | None = None) -> DictConfig:
    """The composed training config for ``overrides`` (logger off, no progress bar).

    With ``run_dir``, the run writes there and outputs/data caches go beside it.
    """
    base = ["logger=none", "trainer.progress=false"]
    if run_dir is not None:
        base += [f"run_dir={run_dir}", f"paths.output_dir={run_dir.parent}",
                 f"paths.data_dir={run_dir.parent / 'data'}"]
    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs"), version_base="1.3"):
        return compose("train", overrides=base + overrides)


def with_user_data(cfg: DictConfig) -> DictConfig:
    """``cfg`` with every setting the user must give (``???``: data files) filled in with a
    placeholder path, for tests of presets that need no data to be read."""
    for key in OmegaConf.missing_keys(cfg):
        OmegaConf.update(cfg, key, ["user.txt"] if key.endswith("paths") else "user.txt")
    return cfg


def forward_log_likelihood(initial: torch.Tensor, transition: torch.Tensor,
                           emission: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x) (N,) of an HMM by the left-to-right forward algorithm in log space: initial
    (h,), a dense transition (h, h) (rows sum to one), emission (h, V); x (N, T), MISSING
    (-1) marginalized. The model's own recursion runs right to left in scaled linear space,
    so this is an independent oracle."""
    from monarchpc.circuits.hmm import MISSING

    log_b = torch.cat([emission.t().log(), emission.new_zeros(1, emission.shape[0])])  # (V+1, h)
    x = torch.where(x == MISSING, emission.shape[1], x)
    alpha = initial.log() + log_b[x[:, 0]]
    log_a = transition.log()[None]
    for t in range(1, x.shape[1]):
        alpha = torch.logsumexp(alpha[:, :, None] + log_a, dim=1) + log_b[x[:, t]]
    return torch.logsumexp(alpha, dim=1)


def chi2_critical(df: int, z: float = 3.0902) -> float:
    """The chi-square quantile at 1 - 0.001 (z = the normal 0.999 quantile) by the
    Wilson-Hilferty approximation (within 1% for df >= 3: df = 10 gives 29.62, the
    tabulated value is 29.59)."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def chi2(samples: torch.Tensor, probs: dict[tuple[int, ...], float]) -> tuple[float, int]:
    """Pearson's statistic of the rows ``samples`` against ``probs`` (outcome -> p) and its
    degrees of freedom; outcomes expected fewer than 5 times are pooled into one cell."""
    n = len(samples)
    counts: dict[tuple[int, ...], int] = {}
    for row in map(tuple, samples.tolist()):
        counts[row] = counts.get(row, 0) + 1
    assert set(counts) <= set(probs), "a sample outside the support"
    cells, pooled_o, pooled_e = [], 0.0, 0.0
    for outcome, p in probs.items():
        o, e = counts.get(outcome, 0), n * p
        if e >= 5:
            cells.append((o, e))
        else:
            pooled_o, pooled_e = pooled_o + o, pooled_e + e
    if pooled_e > 0:
        cells.append((pooled_o, pooled_e))
    return sum((o - e) ** 2 / e for o, e in cells), len(cells) - 1


def assert_samples_follow(samples: torch.Tensor, outcomes: torch.Tensor, p: torch.Tensor,
                          wrong_by: float = 0.02, seed: int = 0) -> None:
    """Pearson's chi-square test of ``samples`` (n, D) against the exact probabilities
    ``p`` of ``outcomes`` (M, D) at level 0.001, with a power control: as many draws from
    a distribution ``wrong_by`` away in total variation (p moved toward the uniform) are
    rejected by the same test."""
    probs = {tuple(o): float(q) for o, q in zip(outcomes.tolist(), p, strict=True)}
    stat, df = chi2(samples, probs)
    assert stat < chi2_critical(df), (stat, df)
    uniform = torch.full_like(p, 1.0 / len(p))
    eps = wrong_by / (0.5 * float((p - uniform).abs().sum()))
    wrong = (1 - eps) * p + eps * uniform
    draws = torch.multinomial(wrong.float(), len(samples), replacement=True,
                              generator=torch.Generator().manual_seed(seed))
    stat, df = chi2(outcomes[draws], probs)
    assert stat > chi2_critical(df), ("no power", stat, df)


class EagerGraph:
    """Stands in for a CUDA graph on the CPU: a replay runs the recorded step again."""

    def __init__(self, step: object) -> None:
        self.replay = step


def eager_capture_graph(x: torch.Tensor, warm_up, record) -> tuple:
    """monarchpc.learning.cuda_graphs.capture_graph on the CPU (monkeypatch it in): the warm-up
    runs now, the recorded step at each replay (a capture itself computes nothing)."""
    static_x = x.clone()
    warm_up(static_x)
    log_likelihood = torch.empty(x.shape[0])
    return static_x, EagerGraph(lambda: log_likelihood.copy_(record(static_x))), log_likelihood


def renormalized(model: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy whose parameters sum to one exactly along their last dimension."""
    model = model.double()
    with torch.no_grad():
        for p in model.parameters():
            p /= p.sum(-1, keepdim=True)
    return model


# ---- bounds of the fused E-step tests against float64 autograd --------------------------
# Measured with ``python -m tests.tolerances`` (every E-step case of tests/learning, 2-core
# CPU): the largest fp32 errors were 3.0e-7 of |log p| (1.4e-6 on the 60-variable HCLTs)
# and 5.0e-7 of a flow (1.3e-6 on the 60-variable HCLTs), element by element. The bounds
# are about 10x those. Triton's element kernels gather and scatter through a one-hot
# product on the posterior split into two bf16 terms (relative error < 2^-16 a term, by
# design: monarchpc/kernels/hmm.py ``_split_dot``): 1.9e-5 measured, bounded at 2e-4.
FP32_LL_RTOL = 3e-6
FP32_FLOW_RTOL = 5e-6
DEEP_FP32_RTOL = 1.5e-5  # the 60-variable chain and star (log p and flows)
TRITON_FLOW_RTOL = 2e-4
# An absolute floor for flows near zero (expected counts, so 1e-7 is fp32's epsilon of
# one count): a flow that underflows is compared absolutely, every other relatively.
FLOW_ATOL = 1e-7
FLOW_FLOOR = 1e-6  # tests/tolerances.py: flows above it are measured relatively

# Unit roundoff of an operand of the 16-bit and TF32 products (round to nearest: half of
# 2^-7, 2^-10 and 2^-10, the spacing of the stored significand).
UNIT_ROUNDOFF = {"bf16": 2.0**-8, "fp16": 2.0**-11, "tf32": 2.0**-11}


def rounding_bands(precision: str, layers: int, edges: int) -> tuple[float, float]:
    """(log p in nats, flow relative) bounds of an E-step whose products round operands.

    Each of ``edges`` sum blocks on the way to the root (an HMM: T - 1 transitions; an
    HCLT: D - 1 tree edges) runs ``layers`` products, each reading a rounded state and a
    rounded weight (2u) of positive terms, and stores a rounded node state (u): log p moves
    by at most (2 layers + 1) u a block, to first order. A flow is theta * alpha * beta / p:
    the forward and backward states and p each bring that much again, so 2x (+ u for
    theta). Worst case, and a wrong E-step is off by O(1), far outside it. It holds while the
    states stay in the format's normal range (fp16: above 2^-14; bf16 and TF32 have fp32's),
    and it grows with the path: at T = 64 the flows' band passes 100% (a deeper model needs
    a statistical bound, not this one)."""
    u = UNIT_ROUNDOFF[precision]
    ll = (2 * layers + 1) * u * edges
    return ll, 2 * ll + u


def flow_pairs(fast: torch.nn.Module, ref: torch.nn.Module) -> list[tuple[torch.Tensor,
                                                                          torch.Tensor]]:
    """(flows of ``fast`` in float64, flows of ``ref``) for every parameter, in order."""
    from monarchpc.learning.em import flows

    return [(flows(p).double(), flows(q).double())
            for p, q in zip(fast.parameters(), ref.parameters(), strict=True)]


def assert_estep_matches(fast: torch.nn.Module, ref: torch.nn.Module, ll: torch.Tensor,
                         ll_ref: torch.Tensor, ll_rtol: float = FP32_LL_RTOL,
                         flow_rtol: float = FP32_FLOW_RTOL) -> None:
    """log p (N,) within ``ll_rtol`` of |log p| (at least 1 nat) row by row, and every flow
    within ``flow_rtol`` of itself (+ FLOW_ATOL), element by element: the fused E-step of
    ``fast`` against autograd on ``ref`` (float64, the same parameters)."""
    err = (ll.double() - ll_ref.double()).abs() / ll_ref.double().abs().clamp_min(1.0)
    assert float(err.max()) <= ll_rtol, f"log p off by {float(err.max()):.2e} of |log p|"
    for i, (f, r) in enumerate(flow_pairs(fast, ref)):
        torch.testing.assert_close(f, r, rtol=flow_rtol, atol=FLOW_ATOL,
                                   msg=lambda m, i=i: f"flows of parameter {i}: {m}")


def low_precision_errors(fast: torch.nn.Module, ref: torch.nn.Module, ll: torch.Tensor,
                         ll_ref: torch.Tensor) -> tuple[float, float]:
    """(largest |log p - log p_64| in nats, largest |F - F_64| / F_64 of any flow)."""
    ll_err = float((ll.double() - ll_ref.double()).abs().max())
    flow_err = max(float(((f - r).abs() / r.clamp_min(FLOW_ATOL)).max())
                   for f, r in flow_pairs(fast, ref))
    return ll_err, flow_err


QUICK = ["optim.epochs=1", "trainer.eval_every=1000", "trainer.eval_at_start=false",
         "trainer.long_eval=never", "trainer.device=cpu"]
"""Overrides of a tiny run: one epoch, evaluated once at the end, on the CPU."""


def tiny_run(run_dir: Path, experiment: str, *overrides: str) -> Path:
    """Train ``experiment`` (demo or image_demo) with ``overrides`` and :data:`QUICK` into
    ``run_dir`` through the training loop; returns ``run_dir``."""
    from monarchpc.train import run

    run(compose_config([f"experiment={experiment}", *overrides, *QUICK], run_dir))
    return run_dir
