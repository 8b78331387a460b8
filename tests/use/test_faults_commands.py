"""Fault injection on the commands that use a trained run (sample, score, load_run): every
probe of issue 29 ends in one line on stderr and exit status 2 before any heavy work (or
behaves correctly), never a traceback, a NaN metric or an allocator crash.

Tiny runs are trained once per module; each test damages a copy of one.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import monarchpc
from monarchpc import checkpoint, memory
from monarchpc.errors import RunDirError
from tests.helpers import tiny_run
from tests.use.test_commands import invoke


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("faults") / "text", "demo", "model.hidden_size=16",
                    "dataset.fractions=[0.05,0.02,0.02]")


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("faults") / "image", "image_demo",
                    "model.hidden_size=4", "model.chow_liu_bins=8", "optim.batch_size=2048")


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / run_dir.name
    shutil.copytree(run_dir, out)
    return out


def one_line(result, *words: str) -> None:
    """Exit 2, one line on stderr naming the problem (``words``), nothing on stdout."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("monarchpc: error: ") and result.stderr.count("\n") == 1, \
        result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    for word in words:
        assert word in result.stderr, result.stderr


# ------------------------------------------------------------------- the run's own files

@pytest.mark.parametrize("text, words", [
    ("a: ${b}\nb: ${a}\n", ["does not resolve"]),  # recursive interpolation
    ("model: {structure: hmm, hidden_size: '${oc.env:MONARCHPC_SURELY_UNSET}'}\n"
     "dataset: {name: demo}\n", ["does not resolve", "MONARCHPC_SURELY_UNSET"]),
    ("- 1\n- 2\n", ["holds a YAML list", "not a run's config"]),
    ("model: [unclosed\n", ["not valid YAML"]),
    ("model: {structure: tree}\ndataset: {name: demo}\n", ["lacks a run's model.structure"]),
])
def test_a_malformed_config_yaml_is_one_line(text_run: Path, tmp_path: Path, text: str,
                                             words: list[str]) -> None:
    run_dir = copy_of(text_run, tmp_path)
    (run_dir / "config.yaml").write_text(text)
    for result in (invoke("sample", f"run_dir={run_dir}", "n=1", "length=4"),
                   invoke("score", f"run_dir={run_dir}", f"file={run_dir / 'train.log'}")):
        one_line(result, "config.yaml", ".hydra/config.yaml", *words)
    with pytest.raises(RunDirError, match=r"config\.yaml"):
        monarchpc.load_run(run_dir)


def damaged(state: dict, how: str) -> dict:
    state = {k: v.clone() for k, v in state.items()}
    if how == "nan":
        state["emission"][0, 0] = float("nan")
    elif how == "negative":
        state["emission"][0, :2] = torch.tensor([-0.5, 1.5])
    elif how == "unnormalized":
        state["initial"] = state["initial"] * 3
    elif how == "wrong shape":
        key = next(k for k in state if k.startswith("transition"))
        state[key] = state[key][..., :1]
    elif how == "missing":
        del state["initial"]
    return state


@pytest.mark.parametrize("how, words", [
    ("nan", ["emission", "NaN"]), ("negative", ["emission", "negative"]),
    ("unnormalized", ["initial", "do not sum to 1"]),
    ("wrong shape", ["does not fit the run's model", "transition"]),
    ("missing", ["does not fit the run's model", "initial"]),
])
def test_a_checkpoint_of_bad_tensors_is_one_line_never_a_nan_score(
        text_run: Path, tmp_path: Path, how: str, words: list[str]) -> None:
    run_dir = copy_of(text_run, tmp_path)
    ckpt = checkpoint.load(run_dir)
    # tensors and plain values only: it passes weights_only=True; its values are the fault
    torch.save({"model": damaged(ckpt["model"], how), "config": ckpt["config"]},
               run_dir / "checkpoint.pt")
    result = invoke("score", f"run_dir={run_dir}", f"file={run_dir / 'train.log'}",
                    "checkpoint=last")  # the damaged file (auto would take best.pt)
    one_line(result, "checkpoint.pt", *words)
    assert "nan" not in result.stdout.lower()


# ------------------------------------------------------------------------------ score

def test_score_refuses_rows_that_cannot_fit_in_memory(text_run: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    text = tmp_path / "one_line.txt"
    text.write_text("hello world " * 20_000)  # one line, 240k characters
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 50_000_000)
    result = invoke("score", f"run_dir={text_run}", f"file={text}", "length=-1")
    one_line(result, "scoring 1 row(s) of 240,000 units", "only 0.05 GB of RAM is free",
             "length=")
    ok = invoke("score", f"run_dir={text_run}", f"file={text}")  # rows of 256: they fit
    assert ok.returncode == 0 and "BPC" in ok.stdout, ok.stderr


def test_score_refuses_what_training_refuses(text_run: Path, tmp_path: Path) -> None:
    binary = tmp_path / "data.bin"
    binary.write_bytes(bytes(range(256)) * 40)
    one_line(invoke("score", f"run_dir={text_run}", f"file={binary}"),
             "is not UTF-8 text", "dataset.allow_non_text is false")
    result = invoke("score", f"run_dir={text_run}", "file=/dev/zero")
    one_line(result, "file=/dev/zero is not a regular file")
    assert "dataset.paths" not in result.stderr  # a command's message, not training's
    one_line(invoke("score", f"run_dir={text_run}", f"file={tmp_path}"), "is a folder")
    one_line(invoke("score", f"run_dir={text_run}", f"file={binary}", "length=-2"),
             "length must be")


# ----------------------------------------------------------------------------- sample

def test_sample_refuses_buffers_that_cannot_fit_anywhere(text_run: Path) -> None:
    free = memory.shown(memory.available_bytes("cpu"))[:2]  # the message names free RAM
    for args in (["length=1000000000000", "n=1"], ["n=100000000000", "length=2"]):
        one_line(invoke("sample", f"run_dir={text_run}", *args),
                 "needs about", "of RAM is free now", "fewer or shorter", free)


def test_sample_checks_its_options_and_output_before_sampling(text_run: Path,
                                                              tmp_path: Path) -> None:
    one_line(invoke("sample", f"run_dir={text_run}", "top=-3"), "top must be >= 0")
    one_line(invoke("sample", f"run_dir={text_run}", "length=-1"), "length must be >= 0")
    folder = tmp_path / "a folder"
    folder.mkdir()
    one_line(invoke("sample", f"run_dir={text_run}", "n=1", f"out={folder}"),
             "is a directory")
    out = tmp_path / "missing" / "deeper" / "samples.txt"  # its folders are made
    result = invoke("sample", f"run_dir={text_run}", "n=2", "length=5", f"out={out}")
    assert result.returncode == 0, result.stderr
    assert out.read_text().splitlines() == result.stdout.splitlines()


def image_file(kind: str, path: Path) -> Path:
    rgb = np.random.default_rng(0).integers(0, 256, (40, 40, 3)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG")
    if kind == "tiny":
        Image.fromarray(rgb[:8, :8]).save(path)
    else:
        path.write_bytes({"empty": b"", "truncated": buffer.getvalue()[:150],
                          "text": b"not an image"}[kind])
    return path


@pytest.mark.parametrize("kind, words", [
    ("empty", ["cannot read image"]), ("truncated", ["cannot read image", "truncated"]),
    ("text", ["cannot read image"]),
    ("tiny", ["8 x 8 pixels, smaller than the run's image size 32 x 32", "not upscaled"]),
])
def test_image_commands_refuse_unreadable_or_small_images(image_run: Path, tmp_path: Path,
                                                          kind: str, words: list[str]) -> None:
    photo = image_file(kind, tmp_path / "photo.png")
    one_line(invoke("sample", f"run_dir={image_run}", f"image={photo}", "n=1",
                    f"out={tmp_path / 'fill'}"), *words)
    one_line(invoke("score", f"run_dir={image_run}", f"file={photo}"), *words)
    assert not list(tmp_path.glob("fill*"))


def test_a_16_bit_photo_scores_as_its_8_bit_twin(image_run: Path, tmp_path: Path) -> None:
    """A 16-bit PNG (mode I;16) is scaled to 8 bits, not clipped to white: it scores as
    the 8-bit image it rounds to."""
    values = np.random.default_rng(2).integers(0, 65536, (32, 32)).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    grey = ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    Image.fromarray(np.repeat(grey[..., None], 3, -1)).save(tmp_path / "twin.png")
    deep = invoke("score", f"run_dir={image_run}", f"file={tmp_path / 'deep.png'}")
    twin = invoke("score", f"run_dir={image_run}", f"file={tmp_path / 'twin.png'}")
    assert deep.returncode == 0 and twin.returncode == 0, deep.stderr
    assert deep.stdout.split(": ", 1)[1] == twin.stdout.split(": ", 1)[1]
