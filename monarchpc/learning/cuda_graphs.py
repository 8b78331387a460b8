"""CUDA graphs of the fused E-steps (HMM and HCLT), and the gradient buffers they add into.

An E-step ``run(x, grads) -> log p`` adds d log p / d theta into fp32 buffers shaped as the
model's parameters. :func:`into_grads` runs it once into the parameters' ``.grad``;
:class:`CapturedEStep` captures it as a CUDA graph per input shape and replays it (small
models launch more kernels than they can hide: the graph launches them at once).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


def accumulable(param: Tensor) -> bool:
    """Whether ``param.grad`` exists as a contiguous fp32 tensor to accumulate into."""
    g = param.grad
    return g is not None and g.dtype == torch.float32 and g.is_contiguous()


def add_grad(param: Tensor, grad: Tensor, owned: bool = False) -> None:
    """Accumulate ``grad`` into ``param.grad`` (as autograd would); an ``owned`` tensor
    (fresh, used nowhere else) becomes the gradient itself instead of a copy."""
    if param.grad is None:
        param.grad = grad.to(param.dtype) if owned else grad.to(param.dtype, copy=True)
    else:
        param.grad += grad


def into_grads(run: Callable[[list[Tensor]], Tensor], params: list[Tensor],
               device: torch.device) -> Tensor:
    """``run(grads)`` with fp32 buffers for ``params``: their ``.grad`` where it can
    accumulate in place, else zeros that then become (or are added to) ``.grad``."""
    grads = [p.grad if accumulable(p) else torch.zeros(p.shape, device=device) for p in params]
    out = run(grads)
    for param, g in zip(params, grads, strict=True):
        if g is not param.grad:
            add_grad(param, g, owned=True)
    return out


def capture_graph(x: Tensor, warm_up: Callable[[Tensor], object],
                  record: Callable[[Tensor], object]) -> tuple[Tensor, torch.cuda.CUDAGraph, Any]:
    """(static input, CUDA graph, its outputs): ``warm_up`` once on a side stream (compiles
    kernels, sets up cuBLAS), then ``record`` captured on a copy of ``x``; replay the graph
    after copying new inputs into the static one."""
    static_x = x.clone()
    side = torch.cuda.Stream(x.device)
    side.wait_stream(torch.cuda.current_stream(x.device))
    with torch.cuda.stream(side):
        warm_up(static_x)
    torch.cuda.current_stream(x.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = record(static_x)
    return static_x, graph, outputs


class CapturedEStep:
    """An E-step ``run(x, grads) -> log p`` (adding d log p / d theta into fp32 buffers
    ``grads`` shaped as ``params``) captured as a CUDA graph per input shape, then replayed.

    The buffers persist and serve as the parameters' ``.grad``: a replay accumulates into
    them while they are the gradients, and starts them from zero after the gradients were
    consumed (``.grad`` set to None, as :func:`~monarchpc.learning.em.em_step` does); any
    other ``.grad`` gets the replay's gradients added. ``plain(x)`` (the same E-step,
    adding to ``.grad`` itself) serves shapes beyond ``max_shapes``; ``check(x)`` runs
    before every replay (input validation cannot run inside a graph). Parameters must be
    updated in place; each captured shape keeps its memory.
    """

    def __init__(self, run: Callable[[Tensor, list[Tensor]], Tensor], params: list[Tensor],
                 plain: Callable[[Tensor], Tensor],
                 check: Callable[[Tensor], None] | None = None, max_shapes: int = 2) -> None:
        self.run, self.params, self.plain, self.check = run, params, plain, check
        self.max_shapes = max_shapes
        self.grads: list[Tensor] = []
        self.graphs: dict[tuple, tuple[Tensor, torch.cuda.CUDAGraph, Tensor]] = {}

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        key = (*x.shape, x.dtype)
        if key not in self.graphs and len(self.graphs) >= self.max_shapes:
            return self.plain(x)  # an odd shape: no new graph
        if self.check is not None:
            self.check(x)
        if not self.grads:
            self.grads = [torch.zeros(p.shape, device=x.device) for p in self.params]
        # buffers still holding this update's gradients (a new shape mid-accumulation)
        holding = any(param.grad is g for param, g in zip(self.params, self.grads, strict=True))
        others = []  # gradients that are not our buffers: add the replay's to them
        for param, g in zip(self.params, self.grads, strict=True):
            if param.grad is not g:
                g.zero_()
                if param.grad is None and param.dtype == g.dtype:
                    param.grad = g
                else:
                    others.append((param, g))
        if key not in self.graphs:
            self.graphs[key] = self.capture(x, scratch=holding)
        static_x, graph, log_likelihood = self.graphs[key]
        static_x.copy_(x)
        graph.replay()
        for param, g in others:
            add_grad(param, g)
        return log_likelihood.clone()

    def capture(self, x: Tensor, scratch: bool = False
                ) -> tuple[Tensor, torch.cuda.CUDAGraph, Tensor]:
        """Capture ``run`` on a copy of ``x``. The warm-up run adds into the (zero) buffers,
        which are zeroed again after it; with ``scratch`` (buffers that hold gradients)
        it adds into zeroed copies instead, a second set of gradients in memory."""
        warm = [torch.zeros_like(g) for g in self.grads] if scratch else self.grads
        captured = capture_graph(x, lambda s: self.run(s, warm),
                                 lambda s: self.run(s, self.grads))
        if not scratch:
            for g in self.grads:
                g.zero_()
        return captured
