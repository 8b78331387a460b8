"""python -m monarchpc.bench reference: our weights in the reference's layouts, its errors,
and (when a copy of the reference is given in MONARCHPC_REFERENCE) the tool on the CPU."""

from __future__ import annotations

import json
import math
import os
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from monarchpc.bench import reference as bench_reference
from monarchpc.circuits import dense_block, monarch_block
from monarchpc.circuits.hmm import HMM

REFERENCE = os.environ.get("MONARCHPC_REFERENCE", "")  # a copy of wangben88/MonarchCircuits


class FakeMonarchMatrix(nn.Module):
    def __init__(self, h: int, factors: list[int]) -> None:
        super().__init__()
        self.weights_exp = nn.ParameterList(nn.Parameter(torch.zeros(h // b, b, b))
                                            for b in factors)


def fake_reference() -> types.ModuleType:
    """Parameter holders shaped as the reference's HMM and MonarchHMM (no computation)."""
    class Base(nn.Module):
        def __init__(self, h: int, vocab: int) -> None:
            super().__init__()
            self.beta = nn.Parameter(torch.zeros(h, vocab))
            self.gamma_exp = nn.Parameter(torch.zeros(1, h))

    class FakeHMM(Base):
        def __init__(self, h: int, vocab: int, eos: int) -> None:
            super().__init__(h, vocab)
            self.alpha_exp = nn.Parameter(torch.zeros(h, h))

    class FakeMonarchHMM(Base):
        def __init__(self, h: int, factors: list[int], vocab: int, eos: int) -> None:
            super().__init__(h, vocab)
            self.alpha_exp = FakeMonarchMatrix(h, factors)

    return types.SimpleNamespace(HMM=FakeHMM, MonarchHMM=FakeMonarchHMM)


def reference_transition(weights: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """The reference's Monarch transition on y (h, N), linear space, as its
    MonarchMatrix.forward runs it: last layer first, each a batched product over the
    state viewed as (-1, b, N), then the block axis moved to the front."""
    h, n = y.shape
    for w in reversed(weights):
        y = torch.matmul(w, y.reshape(-1, w.shape[-1], n)).transpose(0, 1).contiguous()
    return y.reshape(h, n)


@pytest.mark.parametrize("factors", [[6], [3, 4], [4, 3], [2, 3, 2], [2, 3, 2, 2]])
def test_our_weights_in_the_references_layout_give_the_same_circuit(factors: list[int]) -> None:
    g = torch.Generator().manual_seed(0)
    block = dense_block(factors[0], g) if len(factors) == 1 else monarch_block(factors, g)
    hmm = HMM(block, 5, g)
    model = bench_reference.reference_model(fake_reference(), hmm, torch.device("cpu"))
    h = math.prod(factors)
    y = torch.rand(h, 3, generator=g, dtype=torch.float64)
    want = hmm.transition.dense()[0].double() @ y  # our block: M y, rows the sum nodes
    if len(factors) == 1:
        got = model.alpha_exp.double() @ y
    else:
        got = reference_transition([w.double() for w in model.alpha_exp.weights_exp], y)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)  # fp32 weights; a wrong
    # layout mixes other states (errors of order one)
    torch.testing.assert_close(model.beta.exp(), hmm.emission, rtol=1e-6, atol=0)
    assert torch.equal(model.gamma_exp[0], hmm.initial)
    # flows in the reference's layouts come back to ours: give each layer w as its
    # "gradient" (flows w * grad = w^2) and expect our layout's w^2
    for w in (model.alpha_exp.weights_exp if len(factors) > 1 else [model.alpha_exp]):
        w.grad = w.detach().clone() if len(factors) > 1 else w.detach() ** 2
    model.beta.grad, model.gamma_exp.grad = model.beta.detach(), model.gamma_exp.detach()
    back = bench_reference.reference_flows(model, hmm)
    for a, ours in enumerate(hmm.transition.layers):
        torch.testing.assert_close(back[f"transition.layers.{a}"], ours.detach() ** 2)


def test_a_missing_or_wrong_reference_says_what_to_put_there(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench_reference.main(["--tiny", "--out", ""])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "github.com/wangben88/MonarchCircuits" in err and "monarch_hmm/hmm.py" in err
    (tmp_path / "hmm.py").write_text("X = 1\n")
    with pytest.raises(SystemExit):
        bench_reference.main(["--tiny", "--reference", str(tmp_path), "--out", ""])
    assert "has no HMM, MonarchHMM" in capsys.readouterr().err


@pytest.mark.skipif(not REFERENCE, reason="set MONARCHPC_REFERENCE to a copy of "
                    "github.com/wangben88/MonarchCircuits to run the reference")
def test_the_reference_runs_beside_us_and_agrees(tmp_path: Path) -> None:
    out = tmp_path / "ref.jsonl"
    bench_reference.main(["--tiny", "--reference", REFERENCE, "--out", str(out)])
    head, *rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert head["reference_precision"].startswith("tf32") and len(head["sha256"]) == 64
    assert [r["case"] for r in rows] == [c[0] for c in bench_reference.TINY_CASES]
    for r in rows:
        assert {"reference_tf32", "ours_tf32", "ours_bf16"} <= set(r)
        assert r["ours_tf32_over_reference_tf32"] > 0 and r["ours_bf16_over_reference_tf32"] > 0
        assert r["ours_tf32"]["timed_check"]["ok"] and r["ours_bf16"]["timed_check"]["ok"]
        a = r["agreement"]  # the same circuit: log p to fp32's precision
        assert a["ll_rel_err"] < 1e-5
        # flows: exact for its dense HMM; its Monarch E-step keeps states in fp16
        assert a["flow_rel_err"] < (1e-4 if len(r["factors"]) == 1 else 5e-2)
