"""Checkpoints: plain values only, loaded without running code, atomic under kill -9 and a
full disk, never written with a non-finite parameter; the divergence guard."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from monarchpc import checkpoint
from monarchpc.data import build_dataset
from monarchpc.errors import CheckpointError, DivergedError
from monarchpc.learning.em import EM, InvalidUpdate, accumulate_flows, invalid
from monarchpc.paths import REPO_ROOT
from monarchpc.run import divergence
from monarchpc.structures import build_model


def tiny_hmm(hidden: int = 4, vocab: int = 5, seed: int = 0) -> nn.Module:
    cfg = OmegaConf.create({"structure": "hmm", "block": "dense", "hidden_size": hidden,
                            "k": None, "factors": None, "perturbation": 8.0})
    return build_model(cfg, vocab, torch.Generator().manual_seed(seed))


def save_tiny(run_dir: Path, seed: int = 0, **sections) -> nn.Module:
    model = tiny_hmm(seed=seed)
    checkpoint.save(run_dir, model, {"update": seed, "wandb_id": None},
                    {"model": {"hidden_size": 4}, "seed": seed}, **sections)
    return model


def assert_same_model(ckpt: dict, model: nn.Module) -> None:
    state = model.state_dict()
    assert ckpt["model"].keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(ckpt["model"][key], value), key


class RunsAShellCommand:
    """A pickle payload that, if unpickled by a plain pickle.load, creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_round_trip_with_extra_sections_is_bitwise(tmp_path: Path) -> None:
    optimizer = {"state": {"0": {"momentum": torch.randn(3, 4, dtype=torch.float64)}},
                 "lr": 0.5, "groups": [1, 2], "pair": (True, None)}
    data = {"name": "demo", "files": [{"name": "a.txt", "size": 3, "sha256": "ab"}]}
    model = save_tiny(tmp_path, seed=3, optimizer=optimizer, data=data)
    ckpt = checkpoint.load(tmp_path)
    assert ckpt["format"] == checkpoint.FORMAT and ckpt["trainer"]["update"] == 3
    assert_same_model(ckpt, model)
    assert ckpt["data"] == data and ckpt["optimizer"]["lr"] == 0.5
    assert torch.equal(ckpt["optimizer"]["state"]["0"]["momentum"],
                       optimizer["state"]["0"]["momentum"])
    assert ckpt["optimizer"]["pair"] == (True, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.FILENAME]  # no .tmp
    assert checkpoint.load(tmp_path / "none") is None


def test_save_takes_tensors_and_plain_values_only(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"checkpoint\['config'\]\['where'\] is a PosixPath"):
        checkpoint.save(tmp_path, tiny_hmm(), {}, {"where": tmp_path})
    with pytest.raises(TypeError, match="key 3 of type int"):
        checkpoint.save(tmp_path, tiny_hmm(), {3: "x"}, {})
    with pytest.raises(TypeError, match=r"\['data'\]\[0\] is a DictConfig"):
        checkpoint.save(tmp_path, tiny_hmm(), {}, {}, data=[OmegaConf.create({"a": 1})])
    with pytest.raises(TypeError, match="reserved"):
        checkpoint.save(tmp_path, tiny_hmm(), {}, {}, format=1)
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_a_crafted_checkpoint_is_refused_and_never_runs(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "marker"
    payload = {"model": {"w": RunsAShellCommand(marker)}, "config": {}, "trainer": {}}
    path = tmp_path / checkpoint.FILENAME
    if how == "pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path)
    with pytest.raises(CheckpointError, match="nothing in it was run") as err:
        checkpoint.load(tmp_path)
    assert "\n" not in str(err.value) and "run_name" in str(err.value)
    assert not marker.exists()
    with contextlib.suppress(RuntimeError):  # the control: an unrestricted load runs it
        torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"\x00" * 64, "is corrupt or holds more than tensors"),
    ("truncated", "is corrupt or holds more than tensors"),
    ("tensor", "not a monarchpc checkpoint"),
    ("no model", "not a monarchpc checkpoint"),
    ("future", "format 99"),
])
def test_bad_checkpoint_files_give_one_clear_line(tmp_path: Path, content, message) -> None:
    path = tmp_path / checkpoint.FILENAME
    if content == "truncated":
        save_tiny(tmp_path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif content == "tensor":
        torch.save(torch.ones(3), path)
    elif content == "no model":
        torch.save({"config": {}}, path)
    elif content == "future":
        torch.save({"format": 99, "model": {}, "config": {}}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as err:
        checkpoint.load(tmp_path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_a_checkpoint_of_the_old_format_still_loads(tmp_path: Path) -> None:
    model = tiny_hmm()  # format 1: the same sections, without "format"
    torch.save({"model": model.state_dict(), "trainer": {"update": 2}, "config": {"seed": 0}},
               tmp_path / checkpoint.FILENAME)
    assert_same_model(checkpoint.load(tmp_path), model)


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past ``limit`` bytes fail with EFBIG, as on a full disk (SIGXFSZ ignored)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_a_full_disk_keeps_the_previous_checkpoint_and_leaves_no_tmp(tmp_path: Path) -> None:
    small = save_tiny(tmp_path)
    big = tiny_hmm(hidden=64, vocab=200)
    with file_size_limit(16_000), pytest.raises(CheckpointError) as err:
        checkpoint.save(tmp_path, big, {"update": 9}, {})
    message = str(err.value)
    assert "\n" not in message and "free on its disk" in message and "resume=true" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.FILENAME]
    assert_same_model(checkpoint.load(tmp_path), small)


def test_a_model_with_nan_is_not_saved(tmp_path: Path) -> None:
    good = save_tiny(tmp_path)
    bad = tiny_hmm()
    with torch.no_grad():
        dict(bad.named_parameters())["transition.layers.0"][0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(DivergedError, match="holds NaN or inf; the last checkpoint"):
        checkpoint.save(tmp_path, bad, {}, {})
    assert_same_model(checkpoint.load(tmp_path), good)


KILLER = """
import json, os, random, signal, sys, time
import torch
from torch import nn
from monarchpc import checkpoint, files
torch.set_num_threads(1)  # nothing parallel before fork
model = nn.Linear(1024, 1024)  # 4 MB a checkpoint
rng = random.Random(0)

def writer(run_dir, out, stall):
    if stall:  # stop inside the write: after the data and its fsync, before the rename
        fsync = files.os.fsync
        def stalled(fd):
            fsync(fd)
            os.write(out, b"writing\\n")
            time.sleep(60)
        files.os.fsync = stalled
    for i in range(1, 10_000):
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(i)
        checkpoint.save(run_dir, model, {"update": i}, {})
        os.write(out, f"{i}\\n".encode())

for name in sys.argv[1:]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        writer(name, write, stall=name.endswith("stall"))
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        first = pipe.readline()  # one save done (or stalled inside one)
        if not name.endswith("stall"):
            time.sleep(rng.uniform(0.0, 0.4))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        print(json.dumps({"dir": name, "out": (first + pipe.read()).split()}), flush=True)
"""


@pytest.mark.slow
def test_kill_9_at_random_points_leaves_a_whole_checkpoint(tmp_path: Path) -> None:
    """Writers of checkpoints (4 MB each) are killed 4 times: once inside a write (stalled
    after its data, before its rename), 3 times at random; the checkpoint is always whole
    and bitwise the last one saved (or the one whose rename the kill just missed reporting).
    """
    dirs = [tmp_path / name for name in ("stall", "a", "b", "c")]
    out = subprocess.run([sys.executable, "-c", KILLER, *map(str, dirs)], check=True,
                         capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(REPO_ROOT))).stdout
    rounds = [json.loads(line) for line in out.splitlines()]
    assert [r["dir"] for r in rounds] == [str(d) for d in dirs]
    stalled = rounds[0]
    assert stalled["out"] == ["writing"] and checkpoint.load(dirs[0]) is None  # no rename
    assert len(list(dirs[0].glob("*.tmp"))) == 1  # the write it was killed in
    for r, run_dir in zip(rounds[1:], dirs[1:], strict=True):
        saved = [int(x) for x in r["out"]]
        update = checkpoint.load(run_dir)["trainer"]["update"]
        assert update in (saved[-1], saved[-1] + 1), (update, saved)
        for value in checkpoint.load(run_dir)["model"].values():
            assert torch.equal(value, torch.full_like(value, update))


@pytest.mark.parametrize("flush_denormal", [False, True])
def test_real_em_never_writes_an_invalid_parameter(flush_denormal: bool) -> None:
    """Pseudocount 0 with step size 1 drives parameters to exact zeros, where rounding
    decides what happens next: on an AVX-512 CPU the autograd path's normalizers made flows
    of -1e-29 ... -1e-10, which normalization turned into growing negative "probabilities"
    that no check saw, until NaN. Now flows are clamped at 0 and an update is written only
    if every new parameter is valid: over 100 real updates, in either denormal mode (the
    trainer flushes denormals), every update leaves finite, non-negative rows summing to 1,
    or the guard stops EM and the parameters before it stay."""
    rows = build_dataset({"name": "demo", "seq_len": 64}).train.long()
    model = tiny_hmm(hidden=64, vocab=27)
    em = EM("probs", pseudocount=0.0)
    fix = divergence.hint({"pseudocount": 0.0}, {"precision": "fp32"})
    torch.set_flush_denormal(flush_denormal)
    try:
        for update in range(1, 101):
            before = {k: v.clone() for k, v in model.state_dict().items()}
            try:
                ll = accumulate_flows(model, rows[(update - 1) * 16:update * 16])
                divergence.check(model, float(ll.sum()), update, fix)
                divergence.em_step(em, model, 1.0, update, fix)
            except DivergedError as err:
                assert "optim.pseudocount > 0" in str(err)
                assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
                break
            for name, param in model.named_parameters():
                assert invalid(param.detach()) is None, (update, name)
                assert torch.allclose(param.sum(-1), torch.ones(()), atol=1e-5)
    finally:
        torch.set_flush_denormal(True)  # as the trainer leaves it for the other tests
    assert float(model.emission.detach().min()) == 0.0  # the zeros were reached


def test_em_clamps_negative_flows_to_zero() -> None:
    """A flow theta * grad below zero (rounding) is an expected count of 0: the update is
    the one of a zero flow, never a negative probability."""
    model, zero = tiny_hmm(hidden=4, vocab=3), tiny_hmm(hidden=4, vocab=3)
    zero.load_state_dict(model.state_dict())
    for p, q in zip(model.parameters(), zero.parameters(), strict=True):
        p.grad = torch.rand_like(p)
        q.grad = p.grad.clone()
        p.grad[..., 0] = -1e-12  # a rounding-sized negative gradient
        q.grad[..., 0] = 0.0
    EM("probs", pseudocount=0.0).step(model, 1.0)
    EM("probs", pseudocount=0.0).step(zero, 1.0)
    for p, q in zip(model.parameters(), zero.parameters(), strict=True):
        assert torch.equal(p, q)
        assert float(p.detach().min()) >= 0


@pytest.mark.parametrize("update", ["probs", "counts"])
@pytest.mark.parametrize("fault", ["nan_flow", "negative_param", "zero_row"])
def test_an_invalid_update_writes_nothing(update: str, fault: str) -> None:
    """An update that would write NaN, a negative value or a row of zeros into any
    parameter raises before any parameter (or the counts rule's totals) changes."""
    model = tiny_hmm(hidden=4, vocab=3)
    em = EM(update, pseudocount=0.0)
    for p in model.parameters():
        p.grad = torch.rand_like(p)
    em.step(model, 0.5)  # one good update: the counts rule now holds totals
    for p in model.parameters():
        p.grad = torch.rand_like(p)
    emission = model.emission
    with torch.no_grad():
        if fault == "nan_flow":
            emission.grad[1, 2] = float("nan")
        elif fault == "negative_param":
            emission[1] = torch.tensor([0.7, 0.6, -0.3])  # a corrupt row, sums to 1
        else:
            emission[1] = 0.0
            emission.grad[1] = 0.0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    totals = {k: v.clone() for k, v in em.totals.items()}
    with pytest.raises(InvalidUpdate, match="emission"):
        em.step(model, 0.5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(v, totals[k]) for k, v in em.totals.items())
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(DivergedError, match="update 9: the update would make emission"):
        for p in model.parameters():
            p.grad = torch.rand_like(p)
        if fault == "nan_flow":
            emission.grad[1, 2] = float("nan")
        elif fault == "zero_row":
            emission.grad[1] = 0.0
        divergence.em_step(em, model, 0.5, 9, "fix")


def test_guard_names_what_is_not_finite() -> None:
    model = tiny_hmm()
    divergence.check(model, -12.5, 1, "fix")  # finite: nothing
    with pytest.raises(DivergedError, match="log-likelihood is nan"):
        divergence.check(model, float("nan"), 1, "fix")
    param = dict(model.named_parameters())["emission"]
    param.grad = torch.zeros_like(param)
    param.grad[0, 0] = float("inf")
    with pytest.raises(DivergedError, match="flows of emission"):
        divergence.check(model, -1.0, 7, "fix")
    param.grad = None
    with torch.no_grad():
        param[1, 1] = float("nan")
    with pytest.raises(DivergedError, match="update 7: the parameter emission"):
        divergence.check(model, -1.0, 7, "fix")
    assert "trainer.precision=fp32" in divergence.hint({"pseudocount": 0.1},
                                                       {"precision": "bf16"})
