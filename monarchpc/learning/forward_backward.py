"""Fused E-step for HMMs: scaled forward-backward with recomputation, no autograd graph.

The reference path (:func:`monarchpc.learning.em.accumulate_flows`) lets autograd cache
every hidden state of every layer. This path computes the same log-likelihood and the
same gradients with respect to the parameters (so ``theta * grad`` are the flows) with
three matrix products per layer and step, and memory O(T/c + k c) hidden states for a
checkpoint interval c instead of O(k T):

1. Right to left (the HMM recursion of circuits/hmm.py), keeping only every c-th scaled
   hidden vector y_t and the per-step scales s_t:
       y_T = e_T / s_T,   y_t = e_t * (M y_{t+1}) / s_t,   log p = log(g . y_1) + sum log s_t
   where e_t = B[:, x_t] and s_t normalizes each column to sum 1.
2. Left to right, one segment of c steps at a time: recompute the segment's y_t and the
   inputs X_d(t) of every Monarch layer d (M = L_0 ... L_{k-1}) from the checkpoint, then
   carry the scaled forward vector v (v_0 = g / (g . y_1)):
       posterior of z_t:   gamma_t = v_{t-1} * y_t               (sums to 1)
       a_0 = v_{t-1} * e_t / s_t,   a_{d+1} = L_d^T a_d,   v_t = a_k
       dlogp/dL_d += sum_t a_d(t) X_d(t)^T   (one batched product per segment, K = c * B)
   The scaling makes v_t . y_{t+1} = 1 exactly, so no further normalizer is needed.

Hidden states are kept hidden-major, (b_0, ..., b_{k-1}, B), so every Monarch layer is one
batched matrix product over strided views (the permutations between layers cost nothing
for k = 2). Matrix operands may be bf16 or fp16 (fp32 accumulation) or TF32; scales,
sums and accumulated gradients stay fp32 (linear space throughout).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from monarchpc.circuits.dense import DenseBlock
from monarchpc.circuits.hmm import HMM
from monarchpc.circuits.monarch import MonarchBlock

DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16,
          "fp16": torch.float16}


def layer_params(hmm: HMM) -> list[Tensor]:
    """The transition's parameters, one per layer (M = L_0 ... L_{k-1}; dense: one layer)."""
    block = hmm.transition
    if isinstance(block, DenseBlock):
        return [block.weight]
    if isinstance(block, MonarchBlock):
        return list(block.layers)
    raise TypeError(f"no fused E-step for {type(block).__name__}")


def as_layer(param: Tensor) -> Tensor:
    """A layer's weights as (pre, post, b, b): a dense (h, h) matrix is (1, 1, h, h)."""
    return param.detach().view(1, 1, *param.shape) if param.dim() == 2 else param.detach()


class Layers:
    """The transition's layers in the compute dtype, applied to hidden-major states.

    A state is a tensor (b_0, ..., b_{k-1}, N) with any strides (N: columns, e.g. the batch).
    """

    def __init__(self, weights: list[Tensor], dtype: torch.dtype) -> None:
        self.w = [as_layer(w).to(dtype) for w in weights]
        self.factors = [int(w.shape[2]) for w in self.w]
        self.k = len(self.w)
        self.h = math.prod(self.factors)

    def view(self, state: Tensor, d: int) -> Tensor:
        """``state`` as (pre_d, b_d, post_d, N) (a view whenever the strides allow)."""
        pre, post = self.w[d].shape[0], self.w[d].shape[1]
        return state.reshape(pre, self.factors[d], post, state.shape[-1])

    def unview(self, out: Tensor, d: int) -> Tensor:
        """A product's output (pre_d, post_d, b_d, N) as a state (b_0, ..., b_{k-1}, N)."""
        b = self.factors
        out = out.view(*b[:d], *b[d + 1:], b[d], out.shape[-1])
        order = [*range(d), self.k - 1, *range(d, self.k - 1), self.k]
        return out.permute(order)

    def apply(self, d: int, state: Tensor, transpose: bool = False) -> Tensor:
        """L_d @ state (or L_d^T @ state) for every column: one batched product."""
        w = self.w[d].transpose(-1, -2) if transpose else self.w[d]
        return self.unview(torch.matmul(w, self.view(state, d).transpose(1, 2)), d)

    def weight_grad(self, d: int, a: Tensor, x: Tensor) -> Tensor:
        """sum over columns of a x^T per block: (pre, post, b, b) in the compute dtype."""
        av = self.view(a, d).transpose(1, 2)
        xv = self.view(x, d).transpose(1, 2)
        return torch.matmul(av, xv.transpose(-1, -2))


def emit_normalize(m: Tensor, table: Tensor, tokens: Tensor, dtype: torch.dtype
                   ) -> tuple[Tensor, Tensor]:
    """y = e * m / s with e = B[:, tokens]: the element-wise half of a right-to-left step.

    m: a state (b_0, ..., b_{k-1}, N) of any strides; table: B (h, V) fp32; tokens (N,).
    Returns (y in ``dtype``, s (N,) fp32), columns of y summing to 1 (linear space).
    """
    y = table[:, tokens].view(m.shape) * m.float()
    s = y.sum(dim=tuple(range(y.dim() - 1)))
    return (y / s).to(dtype), s


def posterior_and_top(v: Tensor, y: Tensor, table: Tensor, tokens: Tensor, s: Tensor,
                      dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The element-wise half of a left-to-right step (states of any strides, linear space).

    Returns (gamma = v * y as (h, N) fp32: the posterior of z_t, columns summing to 1;
    a_0 = v * e / s in ``dtype``: the scaled forward vector entering the transition).
    """
    vf = v.float()
    gamma = (vf * y.float()).reshape(-1, v.shape[-1])
    a0 = (vf * table[:, tokens].view(v.shape) / s).to(dtype)
    return gamma, a0


_COMPILED: dict[str, Any] = {}


def kernels(compile_: bool) -> tuple[Any, Any]:
    """The element-wise steps, compiled into fused kernels (torch.compile) when asked."""
    if not compile_:
        return emit_normalize, posterior_and_top
    if not _COMPILED:
        torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
        _COMPILED["emit"] = torch.compile(emit_normalize, dynamic=False)
        _COMPILED["post"] = torch.compile(posterior_and_top, dynamic=False)
    return _COMPILED["emit"], _COMPILED["post"]


@torch.no_grad()
def hmm_estep(hmm: HMM, x: Tensor, checkpoint_every: int = 16, precision: str = "fp32",
              grad: bool = True, compile_: bool | None = None) -> Tensor:
    """Log-likelihood (N,) of rows ``x`` (N, T); adds dlogp/dtheta to every ``param.grad``.

    With ``grad=False`` only the first pass runs (evaluation).

    ``checkpoint_every`` (c >= 1): the first pass keeps every c-th hidden vector and the
    second recomputes c steps at a time (memory: T/c + (2k + 1) c hidden states of N
    columns; c = T keeps one segment, like caching everything, at the same cost).
    ``precision``: fp32, tf32, bf16 or fp16 operands for the matrix products.
    ``compile_``: fuse the element-wise steps with torch.compile (default: on CUDA).
    """
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {sorted(DTYPES)}, got {precision!r}")
    dtype = DTYPES[precision]
    n, length = x.shape
    layers = Layers(layer_params(hmm), dtype)
    k, h, shape = layers.k, layers.h, (*layers.factors, n)
    table = hmm.emission.detach().float()  # (h, V)
    initial = hmm.initial.detach().float()
    c = max(1, min(int(checkpoint_every), length))
    xt = x.t().contiguous()  # (T, N)
    emit_step, post_step = kernels(x.is_cuda if compile_ is None else compile_)

    def step_down(y_next: Tensor, t: int, keep: list[Tensor] | None = None
                  ) -> tuple[Tensor, Tensor]:
        """(y_t, s_t) from y_{t+1}, optionally keeping every layer's input (M = L_0..L_{k-1})."""
        m = y_next
        for d in reversed(range(k)):
            if keep is not None:
                keep.insert(0, m)
            m = layers.apply(d, m)
        return emit_step(m, table, xt[t], dtype)

    # Pass 1: right to left, keeping y_t for t = 0, c, 2c, ... (0-based) and T - 1.
    e_last = table[:, xt[-1]]
    scales = torch.empty(length, n, dtype=torch.float32, device=x.device)
    scales[-1] = e_last.sum(0)
    y = (e_last / scales[-1]).to(dtype).view(shape)
    checkpoints = {length - 1: y}
    for t in range(length - 2, -1, -1):
        y, scales[t] = step_down(y, t)
        if t % c == 0:
            checkpoints[t] = y
    y_first = y.reshape(h, n).float()
    g_dot = initial @ y_first  # (N,)
    log_likelihood = g_dot.log() + scales.log().sum(0)
    if not grad:
        return log_likelihood

    # Pass 2: left to right, segment by segment, carrying v (v_0 . y_1 = 1).
    grads = [torch.zeros(w.shape, dtype=torch.float32, device=x.device) for w in layers.w]

    def onehot(t: int) -> Tensor:  # (N, V): built per step, (T, N, V) is GBs at V = 8192
        return torch.nn.functional.one_hot(xt[t], table.shape[1]).float()

    emission_flows = torch.zeros_like(table)
    v = (initial[:, None] / g_dot[None, :]).view(shape)
    initial_flows = (v.reshape(h, n) * y_first).sum(1)
    seg = min(c, length - 1)
    x_buf = [torch.empty(*layers.factors, seg, n, dtype=dtype, device=x.device) for _ in range(k)]
    a_buf = [torch.empty_like(b) for b in x_buf]
    for start in range(0, length - 1, c):
        stop = min(start + c, length - 1)  # transitions t -> t+1 for t in [start, stop)
        # recompute y_t for t in [start, stop) from the checkpoint at stop, keeping the
        # input of every layer of every transition in the segment buffers
        y = checkpoints[stop]  # stop is a multiple of c, or T - 1
        ys = {}
        for t in range(stop - 1, start - 1, -1):
            keep: list[Tensor] = []
            y, _ = step_down(y, t, keep)
            ys[t] = y
            for d in range(k):
                x_buf[d][..., t - start, :] = keep[d]
        for t in range(start, stop):
            gamma, a = post_step(v, ys[t], table, xt[t], scales[t], dtype)
            emission_flows.addmm_(gamma, onehot(t))
            for d in range(k):
                a_buf[d][..., t - start, :] = a
                a = layers.apply(d, a, transpose=True)
            v = a
        width = stop - start
        for d in range(k):
            grads[d].add_(layers.weight_grad(d, a_buf[d][..., :width, :].flatten(-2),
                                             x_buf[d][..., :width, :].flatten(-2)))
    gamma, _ = post_step(v, checkpoints[length - 1], table, xt[-1], scales[-1], dtype)
    emission_flows.addmm_(gamma, onehot(length - 1))

    # Gradients: transition layers directly; emission and initial from their flows.
    for param, grad in zip(layer_params(hmm), grads, strict=True):
        add_grad(param, grad.view(param.shape))
    tiny = torch.finfo(torch.float32).tiny
    add_grad(hmm.emission, emission_flows / hmm.emission.detach().clamp_min(tiny))
    add_grad(hmm.initial, initial_flows / hmm.initial.detach().clamp_min(tiny))
    return log_likelihood


def add_grad(param: Tensor, grad: Tensor) -> None:
    """Accumulate ``grad`` into ``param.grad`` (as autograd would)."""
    grad = grad.to(param.dtype)
    if param.grad is None:
        param.grad = grad.clone()
    else:
        param.grad += grad
