"""Stochastic mini-batch EM for circuits whose parameters are stochastic tensors.

The flow of a sum edge (its expected count under the posterior) is theta * dlogL/dtheta,
the gradient of the batch log-likelihood with respect to the log-parameter. Autograd (or a
fused E-step) computes dlogL/dtheta into ``param.grad``; gradients of several micro-batches
add up, so flows F accumulate for free until an EM update consumes them. Two update rules
(``optim.update``), with K the number of children of a sum node (the last dimension):

* ``probs`` averages probabilities:
      theta <- normalize((1 - eta) * theta + eta * normalize(F + pseudocount / K))
* ``counts`` averages expected counts, as the paper's reference code does: a running count
      S <- (1 - eta) * S + eta * (F + pseudocount / K),   theta = normalize(S),
  with S = 0 before the first update (so the first update takes normalize(F) whatever the
  step size). S is kept as theta times one total per sum node (``EM.totals``).

Then probabilities below ``floor`` are raised to it and rows renormalized (the reference
floors at 1e-10 with no pseudocount, so no row ever holds an exact zero). Sum nodes that
received no flow and no pseudocount keep their parameters under both rules.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from monarchpc.learning.schedules import SCHEDULES
from monarchpc.settings import Settings, choice, integer, number

UPDATES = ("probs", "counts")

OPTIM: Settings = {
    "schedule": (choice(*SCHEDULES), "the step-size schedule"),
    "eta0": (number(0.0, 1.0, open_low=True), "the first EM step size"),
    "eta_min": (number(0.0, 1.0), "the last EM step size, <= optim.eta0"),
    "update": (choice(*UPDATES), "the EM update: average probabilities or expected counts"),
    "pseudocount": (number(0.0), "pseudo-count per sum node; 0.1 keeps EM finite"),
    "floor": (number(0.0, 0.5), "smallest probability after an update (reference: 1e-10)"),
    "batch_size": (integer(1), "rows per micro-batch"),
    "accumulate": (integer(1), "micro-batches per EM update"),
    "epochs": (integer(1), "passes over the training rows"),
}
"""The ``optim`` group: stochastic mini-batch EM and its schedule (configs/optim/em.yaml)."""


def accumulate_flows(model: nn.Module, x: Tensor) -> Tensor:
    """Add the flows of batch ``x`` to the parameters' ``.grad``; return log p(x) (N,), nats."""
    ll = model.log_likelihood(x)
    ll.sum().backward()
    return ll.detach()


def flows(param: Tensor) -> Tensor:
    """Flows (expected counts, linear space) accumulated for ``param``: theta * dlogL/dtheta."""
    if param.grad is None:
        return torch.zeros_like(param)
    return (param.detach() * param.grad).clamp_min(0.0)


class InvalidUpdate(ValueError):
    """An EM update that would write a negative, non-finite or all-zero row of parameters."""


class EM:
    """The EM update of ``optim``: rule, pseudocount and floor; holds the counts rule's state.

    ``step`` consumes the flows accumulated in ``param.grad`` of every parameter and clears
    them. It writes nothing unless every new parameter is valid (finite, non-negative, every
    row with a positive sum): otherwise it raises :class:`InvalidUpdate` with the model and
    the counts unchanged. ``state_dict`` / ``load_state_dict`` carry the running totals for
    exact resume.
    """

    def __init__(self, update: str = "probs", pseudocount: float = 0.1,
                 floor: float = 0.0) -> None:
        if update not in UPDATES:
            raise ValueError(f"unknown EM update {update!r}; choose one of {UPDATES}")
        if pseudocount < 0 or not 0.0 <= floor < 1.0:
            raise ValueError(f"EM needs pseudocount >= 0 and 0 <= floor < 1, got "
                             f"{pseudocount}, {floor}")
        self.update, self.pseudocount, self.floor = update, pseudocount, floor
        self.totals: dict[str, Tensor] = {}  # counts rule: total count per sum node

    @torch.no_grad()
    def step(self, model: nn.Module, eta: float) -> None:
        """One EM update of every parameter of ``model`` with step size ``eta``.

        Three phases: every new parameter is computed into its gradient's storage (no
        temporaries the size of a parameter), all are checked, then all are written.
        """
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"EM step size must lie in [0, 1], got {eta}")
        proposals = []
        for name, param in model.named_parameters():
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            # flows are expected counts: >= 0 by definition. The autograd path computes them
            # through the scaled recursion's normalizers, whose cancellation can leave -1e-29
            # ... -1e-10 where the exact value is 0; clamped here, they cannot turn into
            # negative probabilities.
            f = param.grad.mul_(param).clamp_min_(0.0).add_(self.pseudocount / param.shape[-1])
            total = None
            if self.update == "counts":
                total = self._counts(name, param, f, eta)
            else:
                _probs(param, f, eta)
            if self.floor > 0:
                f.clamp_(min=self.floor)
                f.div_(f.sum(-1, keepdim=True))
            proposals.append((name, param, f, total))
        for name, _, new, _ in proposals:
            if problem := invalid(new):
                for _, p, _, _ in proposals:
                    p.grad = None
                raise InvalidUpdate(f"the update would make {name} {problem}")
        for name, param, new, total in proposals:
            param.copy_(new)
            param.grad = None
            if total is not None:
                self.totals[name] = total

    def _counts(self, name: str, param: Tensor, f: Tensor, eta: float) -> Tensor:
        """f <- normalize(S), S = (1 - eta) * theta * total + eta * f; returns sum(S), the
        new total (rows without flow or history keep their parameters and total)."""
        total = self.totals.get(name)
        if total is None:
            total = param.new_zeros((*param.shape[:-1], 1))
        f.mul_(eta).addcmul_(param, total, value=1.0 - eta)
        new_total = f.sum(-1, keepdim=True)
        moved = new_total > 0
        f.div_(new_total.clamp_min(torch.finfo(f.dtype).tiny))
        f.addcmul_((~moved).to(f.dtype), param)
        return torch.where(moved, new_total, total)

    def state_dict(self) -> dict[str, Tensor]:
        """The counts rule's totals by parameter name (empty for the probs rule)."""
        return {name: t.detach().cpu() for name, t in self.totals.items()}

    def load_state_dict(self, state: dict[str, Tensor], device: torch.device | str = "cpu"
                        ) -> None:
        self.totals = {name: t.to(device) for name, t in state.items()}


def invalid(theta: Tensor) -> str | None:
    """What makes ``theta`` (linear space, rows along the last dimension) unfit as
    parameters: non-finite values, negative values or a row summing to 0; else None."""
    if not bool(torch.isfinite(theta.sum(dtype=torch.float32))):
        return "hold NaN or inf"
    if theta.numel() and float(theta.amin()) < 0:
        return f"negative (minimum {float(theta.amin()):.3g})"
    if theta.numel() and not bool((theta.sum(-1) > 0).all()):
        return "hold a row of zeros"
    return None


def _probs(param: Tensor, f: Tensor, eta: float) -> None:
    """f <- normalize((1 - eta) theta + eta normalize(f)), in place; rows without flow keep
    theta."""
    total = f.sum(-1, keepdim=True)
    f.div_(total.clamp_min(torch.finfo(f.dtype).tiny))
    f.addcmul_((total <= 0).to(f.dtype), param)  # rows without flow: target = param
    f.mul_(eta).add_(param, alpha=1.0 - eta)
    f.div_(f.sum(-1, keepdim=True))


def em_step(model: nn.Module, eta: float, pseudocount: float, floor: float = 0.0) -> None:
    """One EM update with the probs rule (see :class:`EM`); clears the flows."""
    EM("probs", pseudocount, floor).step(model, eta)
