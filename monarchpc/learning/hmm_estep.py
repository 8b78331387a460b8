"""Fused E-step for HMMs: scaled forward-backward with recomputation, no autograd graph.

The reference path (:func:`monarchpc.learning.em.accumulate_flows`) lets autograd cache
every hidden state of every layer. This path computes the same log-likelihood and the
same gradients with respect to the parameters (so ``theta * grad`` are the flows) with
three matrix products per layer and step (four where a step is recomputed), in linear
space with one scale per column and step:

1. Right to left (the HMM recursion of circuits/hmm.py), with e_t = B[:, x_t]:
       y_{T-1} = e_{T-1},   y_t = e_t * (M y_{t+1}) / s_{t+1},   s_t = sum_i y_t[i]
       log p = log(g . y_0) + sum_{t >= 1} log s_t
   (y_t sums to s_t: dividing by the previous step's sum needs one pass over a state).
2. Left to right over segments of c transitions, carrying w (w_{-1} = g / (g . y_0)):
       posterior of z_t:   gamma_t = w_{t-1} * y_t               (sums to 1)
       a_0 = w_{t-1} * e_t / s_{t+1},   a_{d+1} = L_d^T a_d,   w_t = a_k
       dlogp/dL_d += sum_t a_d(t) X_d(t)^T   (one batched product per segment, K = c * N)
   where X_d(t) = L_{d+1} ... L_{k-1} y_{t+1} is the input of layer d (M = L_0 ... L_{k-1}).

The first pass keeps every c-th y_t; the second recomputes a segment's X_d(t) from it,
except for the leading segments that fit in ``keep_gb``, whose X_d(t) the first pass
wrote into their buffers already. Products write straight into their slots of a segment
buffer (b_0, ..., b_{k-1}, c, N), and the element-wise work of a step is one kernel
(:mod:`monarchpc.kernels.hmm`: Triton on a GPU, PyTorch otherwise). With Triton layer
products the emission step runs in the last layer's product kernel, and the emission
flows of steps t >= 1 (gamma_t = w_{t-1} * y_t, where w_{t-1} = L_{k-1}^T a_{k-1}(t-1))
in the weight-gradient kernel of layer k-1, which reads a_{k-1} and y_{t+1} already.

Hidden states are kept hidden-major, (b_0, ..., b_{k-1}, N), so every Monarch layer is one
batched matrix product over strided views (learning/hidden_major.py ``HiddenMajor``, with
kernels/monarch.py: cuBLAS, where the permutations between layers cost nothing for k = 2,
or Triton kernels that read and write any strides, for k >= 3). Matrix operands may be
bf16 or fp16 (fp32 accumulation) or TF32; scales, sums and accumulated gradients stay fp32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from monarchpc.circuits.hmm import HMM
from monarchpc.kernels.hmm import element_ops, grad_flows_runs
from monarchpc.learning.cuda_graphs import CapturedEStep, into_grads
from monarchpc.learning.hidden_major import HiddenMajor
from monarchpc.learning.precision import FP32, Precision

GRAPH_MAX_HIDDEN = 2**18  # CUDA graphs by default up to this hidden size (launch-bound sizes)


@torch.no_grad()
def hmm_estep(hmm: HMM, x: Tensor, segment: int = 16, precision: Precision | str = FP32,
              grad: bool = True, kernels: str = "auto", keep_gb: float | str = 0.0,
              products: str = "auto") -> Tensor:
    """Log-likelihood (N,) of rows ``x`` (N, T); adds dlogp/dtheta to every ``param.grad``.

    With ``grad=False`` only the first pass runs (evaluation).

    ``segment`` (c >= 1): the first pass keeps every c-th hidden vector and the
    second recomputes c steps at a time. ``keep_gb``: memory for segments whose layer
    inputs the first pass keeps (no recomputation); each takes (k c + 1) states of N
    columns (``auto``: :func:`auto_keep_gb`). ``precision``: the products' operands
    (:mod:`monarchpc.learning.precision`: fp32, tf32, bf16 or fp16).
    ``kernels``: the element-wise steps in ``triton``, ``torch`` or ``auto`` (Triton on a GPU).
    ``products``: the matrix products likewise (auto: Triton on a GPU for k >= 3, see
    :func:`~monarchpc.kernels.monarch.monarch_products`).
    """
    settings = {"segment": segment, "precision": Precision.of(precision), "kernels": kernels,
                "keep_gb": keep_gb, "products": products}
    if not grad:
        return estep(hmm, x, None, **settings)
    return into_grads(lambda grads: estep(hmm, x, grads, **settings), parameters(hmm),
                      x.device)


def parameters(hmm: HMM) -> list[Tensor]:
    """The parameters an E-step gives gradients for: transition layers, emission, initial."""
    return [*hmm.transition.layers, hmm.emission, hmm.initial]


_AUTO_KEEP: dict[torch.device, float] = {}  # the last auto budget per GPU, for graph captures


def auto_keep_gb(device: torch.device, working_bytes: int) -> float:
    """``keep_gb=auto``: half of the GPU memory free now (the device's free memory and
    torch's cached blocks), less the E-step's other working memory; 8 GB on a CPU. While a
    CUDA graph is captured (no memory queries then) the budget of the warm-up run before it."""
    if device.type != "cuda":
        return 8.0
    if torch.cuda.is_current_stream_capturing():
        return _AUTO_KEEP.get(device, 0.0)
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    _AUTO_KEEP[device] = max(0.0, free / 2 - working_bytes) / 1e9
    return _AUTO_KEEP[device]


def fused_estep(hmm: HMM, device: torch.device, segment: int = 16,
                precision: Precision | str = FP32, keep_gb: float | str = 0.0,
                graphs: str | bool = "auto", products: str = "auto"
                ) -> Callable[[Tensor], Tensor]:
    """The training E-step x (N, T) -> log p (N,): :func:`hmm_estep` with these settings,
    replayed from CUDA graphs when ``graphs`` is true, or ``auto`` and h <= GRAPH_MAX_HIDDEN
    on a GPU (small models, where launching the kernels takes longer than running them)."""
    if graphs not in ("auto", True, False):
        raise ValueError(f"graphs must be auto, true or false, got {graphs!r}")
    settings = {"segment": segment, "precision": Precision.of(precision), "keep_gb": keep_gb,
                "products": products}
    if graphs == "auto":
        graphs = device.type == "cuda" and hmm.hidden_size <= GRAPH_MAX_HIDDEN
    if graphs:
        if device.type != "cuda":
            raise ValueError("CUDA graphs need a GPU; set graphs to auto or false")
        return CapturedEStep(lambda x, grads: estep(hmm, x, grads, **settings),
                             parameters(hmm), lambda x: hmm_estep(hmm, x, **settings))
    return lambda x: hmm_estep(hmm, x, **settings)


def estep(hmm: HMM, x: Tensor, grads: list[Tensor] | None, segment: int = 16,
          precision: Precision | str = FP32, kernels: str = "auto",
          keep_gb: float | str = 0.0, products: str = "auto") -> Tensor:
    """:func:`hmm_estep` on explicit buffers: returns log p (N,) and adds d log p.sum() /
    d theta into ``grads`` (fp32 tensors shaped as :func:`parameters`; None: only the first
    pass, scoring). Runs under ``precision.products()`` (torch's TF32 switch for cuBLAS)."""
    precision = Precision.of(precision)
    with precision.products():
        return _estep(hmm, x, grads, segment, precision, kernels, keep_gb, products)


def _estep(hmm: HMM, x: Tensor, grads: list[Tensor] | None, segment: int,
           precision: Precision, kernels: str, keep_gb: float | str, products: str) -> Tensor:
    dtype = precision.dtype
    n, length = x.shape
    dev = x.device
    layers = HiddenMajor(hmm.transition, precision, products=products)
    factors = layers.factors
    k, h = len(factors), hmm.hidden_size
    table = hmm.emission.detach().float().contiguous()  # (h, V)
    initial = hmm.initial.detach().float()
    ops = element_ops(kernels, dev, table.shape[1], tf32=precision.tf32)
    fuse_emit = ops.emit_product is not None and layers.ops.name == "triton"
    # the emission flows of steps t >= 1 in layer k-1's weight-gradient kernel
    fuse_flows = (fuse_emit and ops.grad_flows is not None
                  and grad_flows_runs(layers.w[k - 1].shape[-1], dtype, dev))
    xt = x.t().contiguous()  # (T, N)
    c = max(1, min(int(segment), length))

    def new_state() -> Tensor:
        return torch.empty(*factors, n, dtype=dtype, device=dev)

    def new_buffers() -> list[Tensor]:
        """Segment buffer: slot j of layer d < k-1 holds X_d(start + j); layer k-1 holds
        y_{start + j} for j in [0, c] (so X_{k-1}(t) = y_{t+1} is slot t - start + 1)."""
        return [torch.empty(*factors, c + (d == k - 1), n, dtype=dtype, device=dev)
                for d in range(k)]

    # transitions t -> t+1 for t in [start, stop); the first `kept` keep the first pass's X
    segments = [(s, min(s + c, length - 1)) for s in range(0, length - 1, c)]
    state_bytes = h * n * dtype.itemsize
    seg_bytes = (k * c + 1) * state_bytes
    if keep_gb == "auto":  # checkpoints, a segment's work and product buffers, fp32 scratch
        working = (len(segments) + 2 * (k * c + 1) + 4) * state_bytes + 3 * h * n * 4
        keep_gb = auto_keep_gb(dev, working)
    kept = min(len(segments), int(float(keep_gb) * 1e9) // seg_bytes) if grads is not None else 0
    buffers = [new_buffers() for _ in range(kept)]

    def step_down(t: int, y_next: Tensor, s_next: Tensor, xs: list[Tensor] | None,
                  start: int, y_out: Tensor) -> Tensor:
        """y_t (into ``y_out``) from y_{t+1}; returns s_t. With ``xs``, every layer's input
        goes into its slot t - start (y_{t+1} is there already)."""
        m = y_next
        for d in reversed(range(1 if fuse_emit else 0, k)):
            slot = xs[d - 1][..., t - start, :] if xs is not None and d > 0 else None
            m = layers.apply(d, m, out=slot)
        if fuse_emit:  # the last layer's product and the emission step in one kernel
            x0 = layers.view(m, 0)
            return ops.emit_product(layers.w[0], x0, table, xt[t], s_next, y_out.view(x0.shape))
        return ops.emit(m, table, xt[t], s_next, y_out)

    # Pass 1: right to left; y_u of a kept segment lands in its slots, and y_stop of every
    # other segment is kept as its checkpoint.
    scales = torch.empty(length, n, dtype=torch.float32, device=dev)
    e_last = table[:, xt[-1]]
    scales[-1] = e_last.sum(0)
    y_last = new_state()
    y_last.copy_(e_last.view(y_last.shape))
    checkpoints = {length - 1: y_last}
    y = y_last
    for t in range(length - 1, -1, -1):
        j = min(t // c, len(segments) - 1) if segments else 0
        if t < length - 1:
            keep = j < kept
            out = buffers[j][k - 1][..., t - segments[j][0], :] if keep else new_state()
            scales[t] = step_down(t, y, scales[t + 1], buffers[j] if keep else None,
                                  segments[j][0] if keep else 0, out)
            y = out
            if grads is not None and not keep and t > 0 and t % c == 0:
                checkpoints[t] = y
        for i in (j - 1, j):  # y_t is slot t - start of segment i when kept (both ends)
            if 0 <= i < kept and segments[i][0] <= t <= segments[i][1]:
                slot = buffers[i][k - 1][..., t - segments[i][0], :]
                if slot.data_ptr() != y.data_ptr():
                    slot.copy_(y)
    y_first = y.reshape(h, n).float()
    g_dot = initial @ y_first  # (N,)
    log_likelihood = g_dot.log() + scales[1:].log().sum(0)
    if grads is None:
        return log_likelihood

    # Pass 2: left to right, segment by segment, carrying w (w_{-1} . y_0 = 1).
    emission_flows = torch.zeros_like(table)
    w = (initial[:, None] / g_dot[None, :]).view(*factors, n)
    initial_flows = (w.reshape(h, n) * y_first).sum(1)
    a_buf = [torch.empty(*factors, c, n, dtype=dtype, device=dev) for _ in range(k)]
    work = new_buffers() if kept < len(segments) else None
    for j, (start, stop) in enumerate(segments):
        xs = buffers[j] if j < kept else work
        if j >= kept:  # recompute X_d(t) for t in [start, stop) from the checkpoint y_stop
            xs[k - 1][..., stop - start, :].copy_(checkpoints[stop])
            for t in range(stop - 1, start - 1, -1):
                step_down(t, xs[k - 1][..., t - start + 1, :], scales[t + 1], xs, start,
                          xs[k - 1][..., t - start, :])
        for t in range(start, stop):
            a = a_buf[0][..., t - start, :]
            ops.post(w, xs[k - 1][..., t - start, :], table, xt[t], scales[t + 1], a,
                     emission_flows if t == 0 or not fuse_flows else None)
            for d in range(k):
                a = layers.apply(d, a, transpose=True,
                                 out=a_buf[d + 1][..., t - start, :] if d + 1 < k else None)
            w = a
        width = stop - start
        for d in range(k):
            first = 1 if d == k - 1 else 0
            a_seg = a_buf[d][..., :width, :].flatten(-2)
            x_seg = xs[d][..., first:first + width, :].flatten(-2)
            if fuse_flows and d == k - 1:  # with the flows of steps start + 1 .. stop
                tokens = xt[start + 1:stop + 1].reshape(-1)
                ops.grad_flows(layers.w[d], grads[d], layers.view(a_seg, d),
                               layers.view(x_seg, d), tokens, emission_flows)
            else:
                layers.accumulate_grad(d, grads[d], a_seg, x_seg)
    if not fuse_flows:
        ops.post(w, y_last, table, xt[-1], scales[-1], None, emission_flows)

    # Gradients: transition layers directly (above); emission and initial from their flows.
    tiny = torch.finfo(torch.float32).tiny
    grads[k].addcdiv_(emission_flows, hmm.emission.detach().float().clamp_min(tiny))
    grads[k + 1].addcdiv_(initial_flows, hmm.initial.detach().float().clamp_min(tiny))
    return log_likelihood
