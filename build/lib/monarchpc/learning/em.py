"""Stochastic mini-batch EM for circuits whose parameters are stochastic tensors.

The flow of a sum edge (its expected count under the posterior) is theta * dlogL/dtheta,
the gradient of the batch log-likelihood with respect to the log-parameter. Autograd
computes dlogL/dtheta into ``param.grad``; gradients of several micro-batches add up, so
flows accumulate for free until :func:`em_step` consumes them:

    theta <- normalize((1 - eta) * theta + eta * normalize(flows + pseudocount / K))

where K is the number of children of the sum node (the last dimension), so
``pseudocount`` is the total pseudo-count given to each sum node (or leaf distribution).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def accumulate_flows(model: nn.Module, x: Tensor) -> Tensor:
    """Add the flows of batch ``x`` to the parameters' ``.grad``; return log p(x) (N,), nats."""
    ll = model.log_likelihood(x)
    ll.sum().backward()
    return ll.detach()


def flows(param: Tensor) -> Tensor:
    """Flows (expected counts, linear space) accumulated for ``param``: theta * dlogL/dtheta."""
    if param.grad is None:
        return torch.zeros_like(param)
    return param.detach() * param.grad


@torch.no_grad()
def em_step(model: nn.Module, eta: float, pseudocount: float) -> None:
    """One EM update of every parameter of ``model`` from its accumulated flows; clears them.

    Sum nodes (rows) that received no flow and no pseudocount keep their parameters.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"EM step size must lie in [0, 1], got {eta}")
    for param in model.parameters():
        # in place, in the gradient's storage: no temporaries the size of the parameter
        f = param.grad.mul_(param) if param.grad is not None else torch.zeros_like(param)
        f.add_(pseudocount / param.shape[-1])
        total = f.sum(-1, keepdim=True)
        f.div_(total.clamp_min(torch.finfo(f.dtype).tiny))
        f.addcmul_((total <= 0).to(f.dtype), param)  # rows without flow: target = param
        f.mul_(eta).add_(param, alpha=1.0 - eta)
        param.copy_(f.div_(f.sum(-1, keepdim=True)))
        param.grad = None
