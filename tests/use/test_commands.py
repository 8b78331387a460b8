"""Using trained runs: monarchpc.load_run, the sample and score commands, on tiny real runs.

Each fixture trains a run for a few EM updates through the training loop (demo text, the
image demo photograph, SentencePiece tokens of Python's help texts). Scores of the runs'
own test splits, written out as files, must equal the test metric the training loop
recorded: that checks loading, the data pipelines of the commands and the metrics at once.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import monarchpc
from monarchpc.data import build_dataset
from monarchpc.data.transforms import ycocg_r
from monarchpc.paths import REPO_ROOT
from monarchpc.queries import MISSING, hclt_map, hmm_map, hmm_marginals, marginal_argmax
from monarchpc.train import run
from monarchpc.use import score
from monarchpc.use.cli import run_cli
from monarchpc.use.codecs import (
    CharCodec,
    image_format,
    image_to_rows,
    read_image,
    rows_to_image,
    to_rgb,
)
from monarchpc.use.load import load_run, run_info
from tests.helpers import QUICK, compose_config, tiny_run


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("use") / "demo", "demo", "model.hidden_size=64",
                    "dataset.fractions=[0.3,0.02,0.02]")


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("use") / "image", "image_demo",
                    "model.hidden_size=16", "model.chow_liu_bins=8", "optim.batch_size=512")


def cli(module: str, *args: str) -> subprocess.CompletedProcess:
    """The command as a user runs it, in a new process (slow: imports torch each time)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", f"monarchpc.{module}", *args], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def invoke(module: str, *args: str) -> Result:
    """The command's main(argv) through run_cli, in this process: exit status and output."""
    main = importlib.import_module(f"monarchpc.{module}").main
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_cli(main, list(args))
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    return Result(code, out.getvalue(), err.getvalue())


def recorded(run_dir: Path, key: str) -> float:
    return float(run_info(run_dir)["final"][key])


# ---------------------------------------------------------------------------- load_run

def test_load_run_gives_the_trained_model(text_run: Path) -> None:
    model, config = monarchpc.load_run(text_run)
    assert config.model.hidden_size == 64 and not model.training
    test = build_dataset(config.dataset).test.long()
    with torch.no_grad():
        bpc = -float(model.log_likelihood(test).double().sum()) / test.numel() / math.log(2)
    assert bpc == pytest.approx(recorded(text_run, "test_bpc"), abs=1e-5)


@pytest.mark.slow
def test_commands_run_as_a_user_runs_them(text_run: Path, tmp_path: Path) -> None:
    out = cli("sample", f"run_dir={text_run}", "n=2", "length=20")
    assert out.returncode == 0 and [len(s) for s in out.stdout.splitlines()] == [20, 20]
    out = cli("score", f"run_dir={tmp_path / 'nothing'}", "file=README.md")
    assert out.returncode == 2
    assert out.stderr == f"monarchpc: error: run directory {tmp_path / 'nothing'} does not " \
                         f"exist; pass run_dir=outputs/<run>\n"


def test_load_run_errors_name_the_fix(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("model: {structure: hmm}\n")
    out = invoke("score", f"run_dir={tmp_path}", "file=README.md")
    assert out.returncode == 2 and "no checkpoint.pt" in out.stderr
    out = invoke("sample", "n=3")
    assert out.returncode == 2 and "missing run_dir=..." in out.stderr
    out = invoke("sample", "run_dir=x", "colour=red")
    assert out.returncode == 2 and "unknown argument 'colour=red'" in out.stderr
    out = invoke("score", "--help")
    assert out.returncode == 0 and "file" in out.stdout and "row length" in out.stdout


# -------------------------------------------------------------------------------- text

def test_sample_prefix_suffix_and_mask(text_run: Path) -> None:
    out = invoke("sample", f"run_dir={text_run}", "n=3", "prefix=The Function", "length=30")
    lines = out.stdout.splitlines()
    assert out.returncode == 0 and len(lines) == 3, out.stderr
    assert all(len(s) == 30 and s.startswith("the function") for s in lines)
    assert all(set(s) <= set(CharCodec().vocab) for s in lines)
    out = invoke("sample", f"run_dir={text_run}", "n=2", "suffix=return value", "length=25")
    assert [len(s) for s in out.stdout.splitlines()] == [25, 25]
    assert all(s.endswith("return value") for s in out.stdout.splitlines())
    a = invoke("sample", f"run_dir={text_run}", "n=2", "seed=7").stdout
    assert a == invoke("sample", f"run_dir={text_run}", "n=2", "seed=7").stdout  # seeded
    assert a != invoke("sample", f"run_dir={text_run}", "n=2", "seed=8").stdout


def test_mask_infill_and_marginals(text_run: Path) -> None:
    mask = "th_ f_nct__n"
    out = invoke("sample", f"run_dir={text_run}", "n=2", f"mask={mask}", "top=2")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for s in lines[:2]:
        assert len(s) == len(mask)
        assert all(m in ("_", c) for m, c in zip(mask, s, strict=True))
    model, _ = load_run(text_run)
    codec = CharCodec()
    marginals = hmm_marginals(model, torch.tensor([codec.encode_mask(mask)]))[0]
    unknown = [t for t, c in enumerate(mask) if c == "_"]
    assert len(lines) == 2 + len(unknown)
    for t, line in zip(unknown, lines[2:], strict=True):
        p, v = marginals[t].topk(2)
        assert line == (f"position {t}: {codec.decode([int(v[0])])!r} {float(p[0]):.3f}, "
                        f"{codec.decode([int(v[1])])!r} {float(p[1]):.3f}")
    bad = invoke("sample", f"run_dir={text_run}", "mask=th_ 42")
    assert bad.returncode == 2 and "mask may hold only" in bad.stderr


def test_most_likely_completions(text_run: Path) -> None:
    """mode=map prints the max-product completion, mode=marginal every unknown position's
    most likely value: one line each, whatever n and seed (both checked against brute
    force in tests/use/test_queries.py)."""
    mask = "th_ f_nct__n r_turns"
    model, _ = load_run(text_run)
    codec = CharCodec()
    x = torch.tensor([codec.encode_mask(mask)])
    out = invoke("sample", f"run_dir={text_run}", f"mask={mask}", "mode=map", "n=3")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [codec.decode(hmm_map(model, x)[0][0])]
    assert all(m in ("_", c) for m, c in zip(mask, out.stdout.strip("\n"), strict=True))
    assert invoke("sample", f"run_dir={text_run}", f"mask={mask}", "mode=map",
                  "seed=5").stdout == out.stdout
    out = invoke("sample", f"run_dir={text_run}", f"mask={mask}", "mode=marginal", "top=1")
    lines = out.stdout.splitlines()
    assert lines[0] == codec.decode(marginal_argmax(x, hmm_marginals(model, x))[0])
    for line in lines[1:]:  # the marginal's first value is the one filled in
        t = int(line.split(":")[0].removeprefix("position "))
        assert line.split(": ")[1].startswith(repr(lines[0][t]))
    out = invoke("sample", f"run_dir={text_run}", "prefix=the function", "length=30",
                 "mode=map")
    assert [len(s) for s in out.stdout.splitlines()] == [30]
    assert out.stdout.startswith("the function")
    bad = invoke("sample", f"run_dir={text_run}", "mode=best")
    assert bad.returncode == 2 and "use one of sample, map, marginal" in bad.stderr
    help_ = invoke("sample", "--help").stdout
    assert "mode" in help_ and "max-product" in help_ and "marginal" in help_


def test_score_of_the_test_split_is_the_recorded_test_bpc(text_run: Path, tmp_path: Path
                                                         ) -> None:
    _, config = load_run(text_run)
    test = build_dataset(config.dataset).test
    text = tmp_path / "test.txt"
    text.write_text(CharCodec().decode(test.flatten()))
    out = invoke("score", f"run_dir={text_run}", f"file={text}")
    assert out.returncode == 0, out.stderr
    assert f"BPC {recorded(text_run, 'test_bpc'):.4f} over {test.numel():,} characters in " \
           f"{len(test)} rows" in out.stdout
    # one evaluation (the final one) is the best: best.pt and checkpoint.pt hold one model
    assert "(NLL " in out.stdout and "; best.pt)" in out.stdout
    for which, name in (("best", "best.pt"), ("last", "checkpoint.pt")):
        got = invoke("score", f"run_dir={text_run}", f"file={text}", f"checkpoint={which}",
                     "json=true")
        result = json.loads(got.stdout)
        assert result["checkpoint"] == name
        assert result["value"] == pytest.approx(recorded(text_run, "test_bpc"), abs=1e-5)
    bad = invoke("score", f"run_dir={text_run}", f"file={text}", "checkpoint=middle")
    assert bad.returncode == 2 and "checkpoint='middle': use auto" in bad.stderr


# ------------------------------------------------------------------------------ images

def test_to_rgb_inverts_ycocg_r_and_clips() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (5000, 3)).astype(np.uint8)
    assert np.array_equal(to_rgb(ycocg_r(rgb), "lossless"), rgb)
    # Y = 0, Co = 255, Cg = 0 lies outside the RGB cube: B = -127 is clipped, not wrapped
    assert to_rgb(np.array([[0, 510, 255]]), "lossless").tolist() == [[128, 0, 0]]


def test_score_of_the_test_crops_is_the_recorded_test_bpd(image_run: Path, tmp_path: Path
                                                         ) -> None:
    _, config = load_run(image_run)
    fmt = image_format(config)
    test = build_dataset(config.dataset).test.long()
    per_image = (fmt.size // fmt.patch) ** 2
    folder = tmp_path / "crops"
    folder.mkdir()
    for i in range(0, len(test), per_image):
        Image.fromarray(rows_to_image(test[i:i + per_image], fmt)).save(folder / f"{i:05}.png")
    out = invoke("score", f"run_dir={image_run}", f"file={folder}")
    assert out.returncode == 0, out.stderr
    assert f"BPD {recorded(image_run, 'test_bpd'):.4f} over {test.numel():,} dimensions" \
        in out.stdout


def test_image_samples_and_inpainting(image_run: Path, tmp_path: Path) -> None:
    out = invoke("sample", f"run_dir={image_run}", "n=6", f"out={tmp_path / 'grid'}", "scale=2")
    assert out.returncode == 0, out.stderr
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (2 * (2 * 8 + 1), 2 * (3 * 8 + 2), 3)  # 2 rows x 3 patches of 8
    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (64, 48, 3)).astype(np.uint8)).save(photo)
    out = invoke("sample", f"run_dir={image_run}", f"image={photo}", "region=4,8,20,28", "n=2",
              f"out={tmp_path / 'fill'}", "scale=1")
    assert out.returncode == 0, out.stderr
    before = np.asarray(Image.open(tmp_path / "fill-before.png"))
    after = np.asarray(Image.open(tmp_path / "fill-after.png"))
    _, config = load_run(image_run)
    original = read_image(photo, image_format(config).size)  # 32 x 32
    assert np.array_equal(before[:, :32], original)
    assert (before[8:28, 33 + 4:33 + 20] == 128).all()  # the masked region, grey
    hole = np.zeros((32, 32), bool)
    hole[8:28, 4:20] = True
    for k in range(2):
        filled = after[:, k * 33:k * 33 + 32]
        assert np.array_equal(filled[~hole], original[~hole])  # evidence kept exactly
    assert not np.array_equal(after[:, :32][hole], after[:, 33:65][hole])  # two samples
    rows = image_to_rows(original, image_format(config))
    assert rows.shape == (16, 192)
    bad = invoke("sample", f"run_dir={image_run}", f"image={photo}", "region=0,0,40,8")
    assert bad.returncode == 2 and "must lie inside the 32x32 image" in bad.stderr


def test_image_most_likely_completion(image_run: Path, tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3)).astype(np.uint8)).save(photo)
    model, config = load_run(image_run)
    fmt = image_format(config)
    original = read_image(photo, fmt.size)
    hole = np.zeros((32, 32), bool)
    hole[8:24, 12:28] = True
    masked = image_to_rows(original, fmt)
    masked[image_to_rows(np.repeat(hole[:, :, None], 3, 2).astype(np.uint8),
                         type(fmt)(fmt.size, fmt.patch, "rgb")).bool()] = MISSING
    want = rows_to_image(hclt_map(model, masked)[0], fmt)
    for seed in (0, 1):
        out = invoke("sample", f"run_dir={image_run}", f"image={photo}", "region=12,8,28,24",
                     "mode=map", "n=3", f"seed={seed}", f"out={tmp_path / 'map'}", "scale=1")
        assert out.returncode == 0, out.stderr
        after = np.asarray(Image.open(tmp_path / "map-after.png"))
        assert after.shape == (32, 32, 3)  # one completion, whatever n
        assert np.array_equal(after, want)
        assert np.array_equal(after[~hole], original[~hole])
    out = invoke("sample", f"run_dir={image_run}", f"image={photo}", "mode=marginal",
                 f"out={tmp_path / 'marginal'}", "scale=1")
    assert out.returncode == 0, out.stderr
    assert np.asarray(Image.open(tmp_path / "marginal-after.png")).shape == (32, 32, 3)
    bad = invoke("sample", f"run_dir={image_run}", f"image={photo}", "top=3")
    assert bad.returncode == 2 and "mode=marginal" in bad.stderr


# ------------------------------------------------------------------ SentencePiece tokens

@pytest.fixture(scope="module")
def token_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HMM over SentencePiece tokens of Python's help texts (the WikiText-2 pipeline)."""
    from pydoc_data.topics import topics

    root = tmp_path_factory.mktemp("use")
    text = root / "help.txt"
    text.write_text("\n".join([s.strip() for k in sorted(topics) for s in topics[k].splitlines()
                               if s.strip()][:3000]))
    run_dir = root / "tokens"
    run(compose_config(["experiment=wikitext2_hmm", f"dataset.path={text}",
                        "dataset.vocab_size=128", "dataset.seq_len=32", "model.hidden_size=16",
                        "optim.batch_size=64", *QUICK], run_dir))
    return run_dir


def test_token_run_samples_and_scores(token_run: Path, tmp_path: Path) -> None:
    out = invoke("sample", f"run_dir={token_run}", "n=2", "prefix=The function returns",
                 "length=20")
    assert out.returncode == 0, out.stderr
    assert all(s.startswith("The function returns") for s in out.stdout.splitlines())
    model, config = load_run(token_run)
    splits = build_dataset(config.dataset)
    text = (token_run.parent / "help.txt").read_text().splitlines()
    test_lines = tmp_path / "test.txt"
    test_lines.write_text("\n".join(text[int(len(text) * 0.8) + int(len(text) * 0.1):]))
    ids = score.text_ids(test_lines, config, token_run)  # the run's pipeline: the same ids
    assert ids[:splits.test.numel()] == splits.test.flatten().tolist()
    rows = score.text_rows(ids, 32)
    with torch.no_grad():
        nll = -sum(float(model.log_likelihood(r[None]).double()) for r in rows)
    out = invoke("score", f"run_dir={token_run}", f"file={test_lines}", "json=true")
    result = json.loads(out.stdout)
    assert result["metric"] == "ppl" and result["units"] == len(ids)
    assert result["nll_nats"] == pytest.approx(nll, rel=1e-6)
    assert result["value"] == pytest.approx(math.exp(nll / len(ids)), rel=1e-6)
    bad = invoke("sample", f"run_dir={token_run}", "mask=a _ c")
    assert bad.returncode == 2 and "mask= works on character runs only" in bad.stderr
