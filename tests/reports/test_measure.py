"""Queries: pruned forward passes and sampling time, and the scripts that record them."""

from __future__ import annotations

import json
import math
import shutil
import sys

import pytest
import torch

from monarchpc.circuits.hmm import MISSING
from monarchpc.paths import REPO_ROOT
from monarchpc.reports import measure as measure_module
from monarchpc.reports import tables
from monarchpc.reports.measure import (
    evaluate_pruning,
    keep_top,
    load_model,
    measure_sampling,
    pruned_log_likelihood,
    sampling_seconds_per_sequence,
)
from monarchpc.reports.records import load_run, load_runs
from monarchpc.structures import build_model
from tests.report_runs import corpus_rows

CONFIGS = [{"structure": "hmm", "block": "dense", "hidden_size": 12},
           {"structure": "hmm", "block": "monarch", "hidden_size": 16, "k": 2},
           {"structure": "hmm", "block": "monarch", "hidden_size": 24, "factors": [2, 3, 4]}]


def model_of(cfg, seed=0):
    return build_model(cfg, 27, generator=torch.Generator().manual_seed(seed)).double()


def reference_pruned(hmm, x_row, keep_fraction, between_layers):
    """Unscaled, one sequence, dense matrices: prune by sorting, as the docstring says."""
    def prune(v):
        n = max(1, math.ceil(keep_fraction * len(v) - 1e-9))
        out = torch.zeros_like(v)
        order = torch.argsort(v, descending=True)[:n]
        out[order] = v[order]
        return out

    block = hmm.transition
    if between_layers:
        mats = [block.layer_dense(d)[0].double() for d in reversed(range(len(block.layers)))]
    else:
        mats = [block.dense()[0].double()]
    b = hmm.emission.detach().double()
    y = b[:, x_row[-1]]
    for t in range(len(x_row) - 2, -1, -1):
        for m in mats:
            y = m @ prune(y)
        y = b[:, x_row[t]] * y
    return float(torch.log(prune(y) @ hmm.initial.detach().double()))


def test_keep_top_keeps_the_largest():
    y = torch.tensor([[0.1, 0.5, 0.2, 0.05, 0.15], [1.0, 2.0, 3.0, 4.0, 5.0]])
    out = keep_top(y, 0.4)  # ceil(2.0) = 2 entries per row
    assert torch.equal(out, torch.tensor([[0, 0.5, 0.2, 0, 0], [0, 0, 0, 4.0, 5.0]]))
    assert torch.equal(keep_top(y, 1.0), y)
    assert (keep_top(y, 0.0) > 0).sum(-1).tolist() == [1, 1]  # at least one state survives


@pytest.mark.parametrize("cfg", CONFIGS)
def test_no_pruning_equals_log_likelihood(cfg):
    hmm = model_of(cfg)
    x = hmm.sample(8, 20, generator=torch.Generator().manual_seed(1))
    x[0, 3] = MISSING
    for between in (False, True):
        got = pruned_log_likelihood(hmm, x, 1.0, between_layers=between)
        torch.testing.assert_close(got, hmm.log_likelihood(x).detach(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("between", [False, True])
def test_pruning_matches_reference_and_never_raises_likelihood(cfg, between):
    hmm = model_of(cfg, seed=2)
    x = hmm.sample(4, 12, generator=torch.Generator().manual_seed(3))
    full = hmm.log_likelihood(x).detach()
    for keep in (0.75, 0.5, 0.2, 0.0):
        got = pruned_log_likelihood(hmm, x, keep, between_layers=between)
        want = torch.tensor([reference_pruned(hmm, row, keep, between) for row in x],
                            dtype=got.dtype)
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)
        assert (got <= full + 1e-12).all()
        if keep < 1.0:  # something was pruned, and the states carry mass: strictly lower
            assert (got < full).any()


class FakeClock:
    """``time.perf_counter`` that moves only when a draw runs: draw i takes ``durations[i]``
    seconds."""

    def __init__(self, durations: list[float]) -> None:
        self.now, self.durations, self.draws = 100.0, list(durations), []

    def perf_counter(self) -> float:
        return self.now

    def sample(self, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
        self.draws.append((n, length))
        self.now += self.durations.pop(0)
        return torch.zeros(n, length, dtype=torch.long)


def test_sampling_time_is_the_median_draw_per_sequence(monkeypatch):
    """On a fake clock: one untimed warm-up draw (9 s), then 3 timed draws of 4, 1 and 2 s:
    the median 2 s of 16 sequences is 0.125 s a sequence."""
    hmm = model_of(CONFIGS[1]).float()
    clock = FakeClock([9.0, 4.0, 1.0, 2.0])
    monkeypatch.setattr(measure_module.time, "perf_counter", clock.perf_counter)
    monkeypatch.setattr(hmm, "sample", clock.sample)
    r = sampling_seconds_per_sequence(hmm, n=16, length=32, repeats=3, warmup=1)
    assert r == {"seconds_per_sequence": 0.125, "median_seconds": 2.0, "n": 16, "length": 32,
                 "repeats": 3}
    assert clock.draws == [(16, 32)] * 4 and not clock.durations


def test_checkpoint_reproduces_the_recorded_test_bpc(runs):
    model, config, info = load_model(runs["m2_16_multiply"])
    rows = corpus_rows()["test"]
    with torch.no_grad():
        bpc = -float(model.log_likelihood(rows).double().sum()) / rows.numel() / math.log(2)
    assert bpc == pytest.approx(info["final"]["test_bpc"], abs=1e-6)
    assert config["model"]["block"] == "monarch"


def test_measure_sampling_writes_run_json(runs, tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    import measure_sampling as script

    run = runs["hmm8"]
    monkeypatch.setattr(sys, "argv", ["measure_sampling.py", "--run", str(run), "--n", "8",
                                      "--repeats", "2", "--device", "cpu"])
    script.main()
    assert "s per sequence" in capsys.readouterr().out
    info = json.loads((run / "run.json").read_text())
    secs = info["sampling_seconds_per_sequence"]
    assert math.isfinite(secs) and secs > 0 and info["sampling"]["length"] == 32
    rec = load_run(run)
    assert rec.sampling_seconds_per_sequence == secs
    # the time reaches Table 1 when this run is the largest dense HMM (alone here)
    row = next(r for r in tables.table1([rec], "chars").rows if r[1] == "HMM")
    assert row[6] == f"{secs:.3g} (cpu, T=32)"
    again = measure_sampling(run, n=4, length=10, repeats=1, device="cpu")
    assert again["length"] == 10
    # a run.json rewritten by the training loop (no sampling fields) keeps the measurement
    info = json.loads((run / "run.json").read_text())
    for key in ("sampling_seconds_per_sequence", "sampling"):
        info.pop(key)
    (run / "run.json").write_text(json.dumps(info))
    assert load_run(run).sampling_seconds_per_sequence == again["seconds_per_sequence"]


def test_eval_pruning_writes_pruning_json(runs, tmp_path):
    run = runs["m2_64_multiply"]
    rows = corpus_rows()["test"][:40]
    r = evaluate_pruning(run, [0.9, 0.0, 0.5], rows=rows, device="cpu", batch_size=16)
    saved = json.loads((run / "pruning.json").read_text())
    assert saved == json.loads(json.dumps(r))
    assert [p["pruned_fraction"] for p in saved["points"]] == [0.0, 0.5, 0.9]
    model, _, _ = load_model(run)
    with torch.no_grad():
        unpruned = -float(model.log_likelihood(rows).double().sum()) / rows.numel() / math.log(2)
    assert saved["points"][0]["bits_per_token"] == pytest.approx(unpruned, abs=1e-5)
    assert all(p["bits_per_token"] >= unpruned - 1e-5 for p in saved["points"])
    rec = next(x for x in load_runs([run]) if x.pruning)
    assert rec.pruning["hidden_size"] == 64
    from monarchpc.reports.plots import figure6

    paths = figure6([rec], tmp_path)
    assert all(p.stat().st_size > 1000 for p in paths)


def test_eval_pruning_rebuilds_the_test_split_from_the_config(runs, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(runs["hmm16"], run)
    r = evaluate_pruning(run, [0.0, 0.5], device="cpu", max_rows=1000)
    rows = corpus_rows()["test"]
    assert r["rows"] == len(rows) and r["seq_len"] == rows.shape[1]
    assert r["points"][0]["bits_per_token"] == pytest.approx(
        json.loads((run / "run.json").read_text())["final"]["test_bpc"], abs=1e-5)


def test_load_model_rejects_missing_checkpoint(tmp_path, runs):
    (tmp_path / "run.json").write_text((runs["hmm4"] / "run.json").read_text())
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        load_model(tmp_path)
