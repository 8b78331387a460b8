"""Circuit multiplication: Kronecker blocks, product HMMs against their factors, and
init=multiply end to end (factor runs trained once, cached, reused, invalidated)."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from monarchpc import checkpoint
from monarchpc.circuits import dense_block, monarch_block
from monarchpc.circuits.hmm import HMM
from monarchpc.config import check_config as validate
from monarchpc.data import build_dataset
from monarchpc.errors import ConfigError
from monarchpc.init.factor_runs import (
    FactorRunIncomplete,
    factor_config,
    load_factor,
    read_info,
    run_name,
    train_factor,
    train_parallel,
)
from monarchpc.init.multiply import kron, kronecker_block, multiply_hmms, multiply_into
from monarchpc.run.evaluate import evaluate
from monarchpc.structures import STRUCTURES
from monarchpc.train import run
from tests.helpers import compose_config

SIZES = {"k2": [2, 3], "k3": [2, 3, 2]}


def dense_hmm(size: int, vocab: int, seed: int) -> HMM:
    """A random dense HMM in float64 (renormalized at that precision)."""
    g = torch.Generator().manual_seed(seed)
    hmm = HMM(dense_block(size, g), vocab, g, perturbation=4.0).double()
    for p in hmm.parameters():
        p.data /= p.data.sum(-1, keepdim=True)
    return hmm


def factors_of(sizes: list[int], vocab: int = 3) -> list[HMM]:
    return [dense_hmm(h, vocab, seed=10 + d) for d, h in enumerate(sizes)]


@pytest.mark.parametrize("sizes", SIZES.values(), ids=SIZES.keys())
def test_kronecker_block_materializes_as_the_kronecker_product(sizes: list[int]) -> None:
    mats = [f.transition.dense()[0] for f in factors_of(sizes)]
    block = kronecker_block(mats)
    assert list(block.spec.factors) == sizes
    torch.testing.assert_close(block.dense()[0], kron(mats), rtol=0, atol=1e-12)
    for d in range(len(sizes)):  # layer d alone: identity on the other axes, A_d on axis d
        eye = [torch.eye(b, dtype=torch.float64) for b in sizes]
        torch.testing.assert_close(block.layer_dense(d)[0],
                                   kron([*eye[:d], mats[d], *eye[d + 1:]]))


@pytest.mark.parametrize("sizes", SIZES.values(), ids=SIZES.keys())
def test_unnormalized_product_computes_the_product_of_the_factors(sizes: list[int]) -> None:
    factors = factors_of(sizes, vocab=5)
    product = multiply_hmms(factors, renormalize=False)
    x = torch.randint(0, 5, (32, 12), generator=torch.Generator().manual_seed(0))
    expected = sum(f.log_likelihood(x) for f in factors)
    torch.testing.assert_close(product.log_likelihood(x), expected, rtol=0, atol=1e-5)
    # ... and it is not a distribution: its emission rows sum to less than one
    assert float(product.emission.detach().sum(-1).max()) < 1.0


@pytest.mark.parametrize("sizes", SIZES.values(), ids=SIZES.keys())
def test_renormalized_product_is_a_distribution(sizes: list[int]) -> None:
    product = multiply_hmms(factors_of(sizes, vocab=3), renormalize=True)
    x = torch.tensor(list(itertools.product(range(3), repeat=5)))  # all 243 sequences
    total = torch.logsumexp(product.log_likelihood(x).detach(), 0).exp()
    assert abs(float(total) - 1.0) < 1e-10
    for p in product.parameters():
        torch.testing.assert_close(p.sum(-1), torch.ones_like(p.sum(-1)))


def test_renormalized_emission_is_the_product_of_factor_emissions_per_state() -> None:
    factors = factors_of([2, 3], vocab=4)
    b = multiply_hmms(factors).emission.detach()
    raw = factors[0].emission[1] * factors[1].emission[2]  # state (1, 2) = row 1 * 3 + 2
    torch.testing.assert_close(b[5], raw / raw.sum())


def test_product_into_a_dense_model_equals_the_monarch_product() -> None:
    factors = factors_of([2, 3], vocab=3)
    monarch = multiply_hmms(factors)
    dense = multiply_into(HMM(dense_block(6), 3).double(), factors)
    x = torch.randint(0, 3, (16, 7), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(dense.log_likelihood(x), monarch.log_likelihood(x))


def test_mismatched_model_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot hold the product"):
        multiply_into(HMM(monarch_block([3, 3]), 3).double(), factors_of([2, 3]))


# ---- init=multiply end to end ---------------------------------------------------------

TINY = ["dataset=synthetic", "dataset.n_train=64", "dataset.n_dev=32", "dataset.n_test=32",
        "dataset.seq_len=12", "model=monarch2_hmm", "model.hidden_size=16",
        "model.factors=[4,4]", "optim.batch_size=32", "optim.epochs=2",
        "trainer.eval_every=100", "trainer.long_eval=never"]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_init_multiply_trains_caches_reuses_and_invalidates_factor_runs(tmp_path: Path) -> None:
    first = tmp_path / "first"
    run(compose_config([*TINY, "init=multiply"], first))
    info = json.loads((first / "run.json").read_text())
    dirs = [Path(d) for d in info["factor_runs"]]
    assert info["init"] == "multiply" and len(dirs) == 2 and dirs[0] != dirs[1]
    assert all(d.parent == tmp_path / "factors" for d in dirs)
    assert info["factor_train_flops"] == sum(records(d)[-1]["train_flops"] for d in dirs) > 0
    saved = OmegaConf.load(first / "config.yaml")
    assert [str(d) for d in dirs] == list(saved.init.factor_runs)
    assert checkpoint.load(first)["config"]["init"]["factor_runs"] == [str(d) for d in dirs]
    for d, seed in zip(dirs, (0, 1), strict=True):
        factor = json.loads((d / "run.json").read_text())
        assert factor["status"] == "finished" and factor["block"] == "dense"
        assert factor["hidden_size"] == 4 and OmegaConf.load(d / "config.yaml").seed == seed

    stamps = {d: (d / "checkpoint.pt").stat().st_mtime_ns for d in dirs}
    second = tmp_path / "second"
    run(compose_config([*TINY, "init=multiply"], second))
    assert json.loads((second / "run.json").read_text())["factor_runs"] == [str(d) for d in dirs]
    assert {d: (d / "checkpoint.pt").stat().st_mtime_ns for d in dirs} == stamps  # reused
    # the product of trained factors starts far below a random model
    random_dir = tmp_path / "random"
    run(compose_config(TINY, random_dir))
    assert records(second)[0]["dev_bpc"] < records(random_dir)[0]["dev_bpc"] - 0.1

    third = tmp_path / "third"
    run(compose_config([*TINY, "init=multiply", "init.optim.epochs=1"], third))
    new = [Path(d) for d in json.loads((third / "run.json").read_text())["factor_runs"]]
    assert not set(new) & set(dirs) and all((d / "run.json").is_file() for d in new)
    assert sorted(p.name for p in (tmp_path / "factors").iterdir() if p.is_dir()) == \
        sorted(d.name for d in [*dirs, *new])


def test_interrupted_factor_run_is_resumed(tmp_path: Path) -> None:
    cfg = compose_config([*TINY, "init=multiply"], tmp_path / "monarch")
    config = factor_config(cfg, 4, 0)
    cache = tmp_path / "factors"
    run_dir = cache / run_name(config)
    run(OmegaConf.create({**config, "run_dir": str(run_dir), "resume": False,
                          "trainer": {**config["trainer"], "stop_after": 1}}))
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    assert train_factor(config, cache, run) == run_dir
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["updates"] == 4  # 2 per epoch, 2 epochs


def test_factor_identity_follows_the_factor_config_only() -> None:
    cfg = compose_config([*TINY, "init=multiply"])
    name = run_name(factor_config(cfg, 4, 0))
    same = compose_config([*TINY, "init=multiply", "trainer.eval_every=7", "run_name=other",
                           "trainer.long_eval=final", "init.cache_dir=/elsewhere"])
    assert run_name(factor_config(same, 4, 0)) == name
    for change in (["init.optim.epochs=3"], ["optim.pseudocount=0.5"], ["seed=1"],
                   ["dataset.n_train=65"], ["trainer.precision=tf32"]):
        other = compose_config([*TINY, "init=multiply", *change])
        assert run_name(factor_config(other, 4, 0)) != name, change
    assert run_name(factor_config(cfg, 4, 1)) != name  # the second factor: seed + 1


def test_init_factors_must_match_the_model() -> None:
    with pytest.raises(ConfigError, match="must equal the Monarch factors"):
        validate(compose_config([*TINY, "init=multiply", "init.factors=[2,8]"]))
    with pytest.raises(ConfigError, match="multiply to 8"):
        validate(compose_config([*TINY, "model=hmm", "init=multiply", "init.factors=[2,4]"]))
    with pytest.raises(ConfigError, match="cannot be factored"):
        validate(compose_config([*TINY, "model=hmm", "model.hidden_size=13", "init=multiply"]))


def test_given_factor_runs_are_used_and_checked(tmp_path: Path) -> None:
    first = tmp_path / "first"
    run(compose_config([*TINY, "init=multiply"], first))
    dirs = json.loads((first / "run.json").read_text())["factor_runs"]
    given = f"init.factor_runs=[{dirs[1]},{dirs[0]}]"  # swapped: still two HMMs of 4
    run(compose_config([*TINY, "init=multiply", given, "init.cache_dir=/nonexistent"],
                       tmp_path / "given"))
    assert json.loads((tmp_path / "given" / "run.json").read_text())["factor_runs"] == \
        [dirs[1], dirs[0]]
    with pytest.raises(ConfigError, match="cannot hold the product"):
        run(compose_config([*TINY, "init=multiply", f"init.factor_runs=[{dirs[0]}]"],
                           tmp_path / "short"))
    with pytest.raises(ConfigError, match="not finished"):
        run(compose_config([*TINY, "init=multiply", f"init.factor_runs=[{tmp_path}]"],
                           tmp_path / "unfinished"))


def test_init_multiply_with_three_factors_starts_from_their_product(tmp_path: Path) -> None:
    run_dir = tmp_path / "m3"
    overrides = [*TINY, "model=monarch3_hmm", "model.hidden_size=8", "model.factors=null",
                 "init=multiply", "optim.epochs=1"]
    run(compose_config(overrides, run_dir))
    info = json.loads((run_dir / "run.json").read_text())
    assert info["factors"] == [2, 2, 2] and len(info["factor_runs"]) == 3
    product = multiply_hmms([load_factor(Path(d), 6) for d in info["factor_runs"]])
    splits = build_dataset(compose_config(overrides).dataset)
    score = STRUCTURES["hmm"].fused.score(product, "fp32")
    expected = evaluate(score, {"dev": splits.dev}, "bpc", 256)["dev_bpc"]
    assert records(run_dir)[0]["dev_bpc"] == pytest.approx(expected, abs=1e-6)


# ---- init.parallel: factor runs as child processes ------------------------------------

def factor_params(run_dir: Path) -> list[tuple[Path, dict[str, torch.Tensor]]]:
    """(factor name, parameters) of the factor runs of the Monarch run in ``run_dir``."""
    dirs = json.loads((run_dir / "run.json").read_text())["factor_runs"]
    return [(Path(d).name, checkpoint.load(Path(d))["model"]) for d in dirs]


@pytest.mark.slow
def test_parallel_factor_runs_equal_sequential_ones_and_are_reused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    par, seq = tmp_path / "par" / "run", tmp_path / "seq" / "run"  # separate caches
    run(compose_config([*TINY, "init=multiply", "init.parallel=true"], par))
    run(compose_config([*TINY, "init=multiply"], seq))
    got, want = factor_params(par), factor_params(seq)
    names = [n for n, _ in got]
    assert names == [n for n, _ in want] and all(
        (par.parent / "factors" / n / "factor.log").is_file() for n in names)
    for (_, a), (_, b) in zip(got, want, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert records(par)[0] == {**records(seq)[0], "wall_time": records(par)[0]["wall_time"]}
    final, expected = checkpoint.load(par)["model"], checkpoint.load(seq)["model"]
    assert all(torch.equal(final[k], expected[k]) for k in expected)

    def no_launch(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished factor run was launched again")

    monkeypatch.setattr(subprocess, "Popen", no_launch)  # all cached: nothing to launch
    run(compose_config([*TINY, "init=multiply", "init.parallel=true"], par.parent / "again"))
    assert [n for n, _ in factor_params(par.parent / "again")] == names


@pytest.mark.slow
def test_failed_parallel_factor_run_names_its_log(tmp_path: Path) -> None:
    cfg = compose_config([*TINY, "init=multiply"], tmp_path / "run")
    good, bad = factor_config(cfg, 4, 0), factor_config(cfg, 4, 1)
    bad["optim"]["eta0"] = 7.0  # a value only the child's config check sees
    log = tmp_path / "factors" / run_name(bad) / "factor.log"
    with pytest.raises(ConfigError, match=f"optim.eta0.*log: {log}"):
        train_parallel([good, bad], tmp_path / "factors")
    assert "optim.eta0" in log.read_text()
    assert json.loads((log.parent.parent / run_name(good) / "run.json").read_text())[
        "status"] == "finished"  # the other one finished


@pytest.mark.slow
def test_signal_stops_parallel_factor_runs_with_a_checkpoint(tmp_path: Path) -> None:
    config = factor_config(compose_config([*TINY, "init=multiply", "optim.epochs=5000"],
                                          tmp_path / "run"), 4, 0)
    config["trainer"]["eval_every"] = 2
    run_dir = tmp_path / "factors" / run_name(config)

    def terminate_once_training() -> None:  # past the first evaluation: in the EM loop
        while not (read_info(run_dir) or {}).get("updates"):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)  # to the parent: forwarded as SIGINT

    threading.Thread(target=terminate_once_training, daemon=True).start()
    with pytest.raises(FactorRunIncomplete, match="run the same command again") as stopped:
        train_parallel([config], tmp_path / "factors")
    assert stopped.value.exit_code == 143  # the parent's SIGTERM, as the command exits
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "interrupted" and 2 <= info["updates"] < 10000  # resumable


def test_resume_needs_no_factor_runs(tmp_path: Path) -> None:
    """A multiply run resumes from its checkpoint even where its factor runs are gone (another
    machine, a cleaned cache): nothing is retrained, the end equals an uninterrupted run's,
    and run.json keeps the factors' cost."""
    whole = tmp_path / "whole"
    run(compose_config([*TINY, "init=multiply"], whole))
    part = tmp_path / "part"
    run(compose_config([*TINY, "init=multiply", "trainer.stop_after=1"], part))
    cost = json.loads((part / "run.json").read_text())["factor_train_flops"]
    shutil.rmtree(tmp_path / "factors")
    run(compose_config([*TINY, "init=multiply", "resume=true"], part))
    assert not (tmp_path / "factors").exists()
    info = json.loads((part / "run.json").read_text())
    assert info["status"] == "finished" and info["factor_train_flops"] == cost > 0
    for a, b in zip(checkpoint.load(whole)["model"].values(),
                    checkpoint.load(part)["model"].values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
