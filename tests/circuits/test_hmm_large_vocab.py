"""The HMM at LM1B's vocabulary (8192): likelihood and flows against a plain log-space
forward algorithm, missing tokens included."""

from __future__ import annotations

import torch

from monarchpc.circuits.hmm import MISSING
from monarchpc.learning.em import flows
from monarchpc.structures import build_model
from tests.helpers import forward_log_likelihood


def test_hmm_flows_at_vocabulary_8192_match_a_reference() -> None:
    g = torch.Generator().manual_seed(0)
    model = build_model({"structure": "hmm", "block": "monarch", "hidden_size": 16, "k": 2},
                        8192, g)
    x = torch.randint(0, 8192, (6, 12), generator=g)
    x[0, 3] = x[2, -1] = x[4, 0] = MISSING
    ll = model.log_likelihood(x)
    ll.sum().backward()

    initial = model.initial.detach().clone().requires_grad_()
    emission = model.emission.detach().clone().requires_grad_()
    ref = forward_log_likelihood(initial, model.transition.dense()[0], emission, x)
    ref.sum().backward()
    torch.testing.assert_close(ll.detach(), ref.detach(), rtol=1e-5, atol=1e-4)
    f = flows(model.emission)
    torch.testing.assert_close(f, emission.detach() * emission.grad, rtol=1e-4, atol=1e-5)
    # the emission flows count the observed tokens: one unit per non-missing position
    torch.testing.assert_close(f.sum(), (x != MISSING).sum().float(), rtol=1e-4, atol=0)
    torch.testing.assert_close(flows(model.initial), initial.detach() * initial.grad,
                               rtol=1e-4, atol=1e-5)
