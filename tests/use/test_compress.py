"""Lossless compression with trained runs: exact round trips, refusals, size against the NLL.

Two tiny runs are trained through the training loop (demo text, the image demo photograph);
a second text run (another seed) stands for "another model". Sizes are checked against the
model's own NLL of the same rows, computed by the circuit's ``log_likelihood``.
"""

from __future__ import annotations

import contextlib
import io
import math
import shutil
from pathlib import Path

import matplotlib.cbook
import numpy as np
import pytest
import torch
from PIL import Image

from monarchpc import conditionals
from monarchpc.circuits.blocks import BlockSpec, SumBlocks
from monarchpc.circuits.hclt import MISSING
from monarchpc.data import build_dataset
from monarchpc.data.chars import VOCAB, normalize_text8
from monarchpc.queries import transpose_apply
from monarchpc.use import compress as mc
from monarchpc.use.cli import run_cli
from tests.helpers import tiny_run


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("compress") / "text", "demo",
                    "model.hidden_size=64", "dataset.fractions=[0.3,0.02,0.05]")


@pytest.fixture(scope="module")
def other_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("compress") / "other", "demo",
                    "model.hidden_size=16", "seed=1", "dataset.fractions=[0.05,0.02,0.02]")


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("compress") / "image", "image_demo",
                    "model.hidden_size=16", "model.chow_liu_bins=8", "optim.batch_size=512")


@pytest.fixture(scope="module")
def test_text(text_run: Path) -> bytes:
    """The text run's test split (5% of the demo corpus) as normalized bytes."""
    from monarchpc.use.load import load_config

    splits = build_dataset(load_config(text_run).dataset)
    return "".join(VOCAB[int(c)] for c in splits.test_stream).encode()


def invoke(main: object, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_cli(main, list(args))
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    return code, out.getvalue(), err.getvalue()


def text_round_trip(run_dir: Path, data: bytes, **options: int) -> tuple[bytes, dict]:
    model, _ = mc.load_model(run_dir)
    blob, stats = mc.compress_text(model, mc.run_id(run_dir), data, **options)
    header, states, words = mc.unpack(blob)
    return mc.decompress_text(model, header, states, words), stats


def image_round_trip(run_dir: Path, images: list[np.ndarray], **options: int
                     ) -> tuple[list[np.ndarray], dict]:
    model, config = mc.load_model(run_dir)
    p, transform = config.dataset.patch_size, config.dataset.transform
    blob, stats = mc.compress_images(model, mc.run_id(run_dir), p, transform,
                                     [(f"{i}.png", im, "RGB") for i, im in enumerate(images)],
                                     **options)
    header, states, words = mc.unpack(blob)
    return mc.decompress_images(model, p, transform, header, states, words), stats


# ----------------------------------------------------------------------- conditionals

@pytest.mark.parametrize("factors", [[12], [4, 3], [2, 3, 2]])
def test_transpose_block_equals_the_autograd_transpose(factors: list[int]) -> None:
    spec = BlockSpec.dense(factors[0]) if len(factors) == 1 else BlockSpec.monarch(factors)
    blocks = SumBlocks(spec, 1, torch.Generator().manual_seed(0)).double()
    u = torch.rand(5, spec.hidden_size, dtype=torch.float64)
    expected = transpose_apply(blocks, u)
    assert torch.allclose(conditionals.transpose_block(blocks, u), expected, rtol=1e-13, atol=0)


def test_hmm_conditionals_multiply_to_the_model_likelihood(text_run: Path) -> None:
    model, _ = mc.load_model(text_run)
    x = torch.randint(0, 27, (4, 50), generator=torch.Generator().manual_seed(0))
    steps = conditionals.HMMSteps(model, torch.full((4,), 50))
    log_p = torch.zeros(4, dtype=torch.float64)
    for t in range(50):
        probs, active = steps.probs(t)
        assert active.all() and torch.allclose(probs.sum(1), torch.ones(4, dtype=torch.float64))
        log_p += probs[torch.arange(4), x[:, t]].log()
        steps.advance(t, x[:, t])
    assert torch.allclose(log_p, model.log_likelihood(x), rtol=1e-10, atol=0)


@pytest.mark.parametrize("dense_edges", [0, 1024])  # Monarch layers, materialized blocks
def test_hclt_conditionals_are_ratios_of_marginals(image_run: Path, dense_edges: int,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conditionals.HCLTTree, "DENSE_EDGES", dense_edges)
    model, _ = mc.load_model(image_run)
    tree = conditionals.HCLTTree(model)
    assert (tree.dense is None) == (dense_edges == 0)
    x = model.sample(3, generator=torch.Generator().manual_seed(0))
    present = torch.ones_like(x, dtype=torch.bool)
    present[2, 100:] = False  # a patch overhanging the image: its tail is never coded
    steps = conditionals.HCLTSteps(tree, present)
    log_p = torch.zeros(3, dtype=torch.float64)
    for t in range(model.num_vars):
        v = int(model.order[t])  # step t codes variable v, after those of steps < t
        probs, active = steps.probs(t)
        assert torch.equal(active, present[:, v])
        assert torch.allclose(probs.sum(1), torch.ones(3, dtype=torch.float64), rtol=1e-12)
        if t in (0, 1, 37, 120, 191):  # p(x_v | x_O) = p(x_O, x_v) / p(x_O), by the model
            coded = torch.zeros(model.num_vars, dtype=torch.bool)
            coded[model.order[:t]] = True
            before = torch.where(coded, x, MISSING)
            coded[v] = True
            upto = torch.where(coded, x, MISSING)
            ratio = (model.log_likelihood(upto[:2]) - model.log_likelihood(before[:2])).exp()
            assert torch.allclose(probs[torch.arange(2), x[:2, v]], ratio, rtol=1e-9)
        log_p += torch.where(active, probs[torch.arange(3), x[:, v]].log(), 0.0)
        steps.advance(t, torch.where(active, x[:, v], 0))
    expected = model.log_likelihood(torch.where(present, x, MISSING))
    assert torch.allclose(log_p, expected, rtol=1e-10, atol=0)


# ------------------------------------------------------------------------- text

EDGE_TEXTS = {
    "empty": b"",
    "one character": b"q",
    "one space": b" ",
    "long run of one letter": b"e" * 10_000,
    "long run of spaces": b" " * 5_000,
    "every symbol": VOCAB.encode() + VOCAB[::-1].encode(),
}


@pytest.mark.parametrize("name", list(EDGE_TEXTS))
def test_text_round_trip_of_edge_inputs(text_run: Path, name: str) -> None:
    data = EDGE_TEXTS[name]
    out, stats = text_round_trip(text_run, data, row=256)
    assert out == data and stats["symbols"] == len(data)


@pytest.mark.parametrize("row,lanes,batch", [(4096, 0, 1024), (7, 3, 2), (100, 64, 5)])
def test_text_round_trip_of_random_text(text_run: Path, row: int, lanes: int, batch: int
                                        ) -> None:
    rng = np.random.default_rng(row)
    data = rng.choice(list(VOCAB.encode()), size=3_001).astype(np.uint8).tobytes()  # uniform
    out, stats = text_round_trip(text_run, data, row=row, lanes=lanes, batch=batch)
    assert out == data
    assert stats["lanes"] == (lanes or 1)


def test_text_size_is_within_one_percent_of_the_model_nll(text_run: Path, test_text: bytes
                                                          ) -> None:
    row = 4096
    out, stats = text_round_trip(text_run, test_text, row=row)
    assert out == test_text and len(test_text) > 15_000
    model, _ = mc.load_model(text_run)
    symbols = torch.from_numpy(mc.text_symbols(test_text))
    nll = -sum(float(model.log_likelihood(r[None])) for r in symbols.split(row)) / math.log(2)
    assert stats["nll_bits"] == pytest.approx(nll, rel=1e-9)  # the coder's model is the run's
    payload_bits = 8 * (stats["bytes"] - stats["header_bytes"])
    assert payload_bits <= 1.01 * nll
    assert stats["header_bytes"] <= 48


def test_compress_commands_round_trip_a_file(text_run: Path, test_text: bytes, tmp_path: Path
                                             ) -> None:
    src = tmp_path / "test.txt"
    src.write_bytes(test_text[:5000])
    code, out, err = invoke(mc.compress_main, f"run_dir={text_run}", f"file={src}", "row=512")
    assert code == 0 and err == "" and out.startswith(f"wrote {src}.mpc: 5,000 characters")
    back = tmp_path / "back.txt"
    code, out, err = invoke(mc.decompress_main, f"run_dir={text_run}", f"file={src}.mpc",
                            f"out={back}")
    assert code == 0 and back.read_bytes() == src.read_bytes()
    code, _, err = invoke(mc.decompress_main, f"run_dir={text_run}", f"file={src}.mpc")
    assert code == 2 and f"{src} exists: pass out=<path>" in err  # never over the input
    src.unlink()
    code, _, _ = invoke(mc.decompress_main, f"run_dir={text_run}", f"file={src}.mpc")
    assert code == 0 and src.read_bytes() == test_text[:5000]
    code, _, err = invoke(mc.compress_main, f"run_dir={text_run}", f"file={src}", "row=512")
    assert code == 2 and f"{src}.mpc exists" in err


def test_text_outside_the_alphabet_is_refused_or_normalized(text_run: Path, tmp_path: Path
                                                            ) -> None:
    src = tmp_path / "notes.txt"
    src.write_text("The 2 cats\n")
    code, out, err = invoke(mc.compress_main, f"run_dir={text_run}", f"file={src}")
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert "byte 0 (b'T') is not in the run's alphabet" in err and "normalize=true" in err
    code, _, _ = invoke(mc.compress_main, f"run_dir={text_run}", f"file={src}", "normalize=true")
    assert code == 0
    code, _, _ = invoke(mc.decompress_main, f"run_dir={text_run}", f"file={src}.mpc",
                        f"out={tmp_path / 'back.txt'}")
    back = (tmp_path / "back.txt").read_bytes()
    assert code == 0 and back == normalize_text8("The 2 cats\n").encode() == b"the two cats "


def test_another_run_or_another_machine_is_refused(text_run: Path, other_run: Path,
                                                   image_run: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "a.txt"
    src.write_bytes(b"to be or not to be")
    assert invoke(mc.compress_main, f"run_dir={text_run}", f"file={src}")[0] == 0
    for wrong in (other_run, image_run):
        code, _, err = invoke(mc.decompress_main, f"run_dir={wrong}", f"file={src}.mpc",
                                f"out={tmp_path / 'x'}")
        assert code == 2 and len(err.splitlines()) == 1 and not (tmp_path / "x").exists()
        assert "the file was compressed with another run" in err
    code, _, err = invoke(mc.decompress_main, f"run_dir={text_run}", f"file={src}.mpc",
                          "device=cuda")
    assert code == 2 and "CPU only" in err and len(err.splitlines()) == 1
    monkeypatch.setattr(mc, "numerics", lambda threads: f"another build, {threads} threads")
    code, _, err = invoke(mc.decompress_main, f"run_dir={text_run}", f"file={src}.mpc",
                          f"out={tmp_path / 'x'}")
    assert code == 2 and "force=true" in err and len(err.splitlines()) == 1
    code, _, _ = invoke(mc.decompress_main, f"run_dir={text_run}", f"file={src}.mpc",
                        f"out={tmp_path / 'x'}", "force=true")
    assert code == 0 and (tmp_path / "x").read_bytes() == src.read_bytes()


def test_a_corrupt_file_is_refused_never_decoded_wrongly(text_run: Path, test_text: bytes,
                                                         tmp_path: Path) -> None:
    model, _ = mc.load_model(text_run)
    blob, stats = mc.compress_text(model, mc.run_id(text_run), test_text[:3000], row=256)
    src = tmp_path / "c.mpc"
    for where in (stats["header_bytes"] + 3, len(blob) - 5, len(blob) // 2):
        bad = bytearray(blob)
        bad[where] ^= 0x10
        src.write_bytes(bytes(bad))
        code, _, err = invoke(mc.decompress_main, f"run_dir={text_run}", f"file={src}",
                              f"out={tmp_path / 'c.txt'}")
        assert code == 2 and len(err.splitlines()) == 1, where
    src.write_bytes(blob[:-4])
    code, _, err = invoke(mc.decompress_main, f"run_dir={text_run}", f"file={src}")
    assert code == 2 and "monarchpc: error:" in err
    src.write_bytes(b"hello")
    code, _, err = invoke(mc.decompress_main, f"run_dir={text_run}", f"file={src}")
    assert code == 2 and "not a monarchpc compressed file" in err


# ----------------------------------------------------------------------------- images

def photo(size: tuple[int, int], top: int = 60, left: int = 150) -> np.ndarray:
    """A crop (h, w, 3) uint8 of matplotlib's sample photograph (the demo run's image)."""
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        rgb = np.asarray(Image.open(f).convert("RGB"))
    return rgb[top:top + size[0], left:left + size[1]].copy()


def test_image_round_trip_of_edge_images(image_run: Path) -> None:
    rng = np.random.default_rng(0)
    images = [
        photo((13, 21)),  # not a multiple of the patch size: the overhang is marginalized
        np.full((8, 8, 3), 200, dtype=np.uint8),  # one symbol throughout
        rng.integers(0, 256, (9, 8, 3)).astype(np.uint8),  # noise
        np.array([[[0, 255, 0]]], dtype=np.uint8),  # one pixel, extreme YCoCg-R values
        np.stack(np.meshgrid(np.arange(256), np.arange(3), indexing="xy")[0:1] * 3, -1)
        .astype(np.uint8)[:, :64],  # ramps: many values of every channel
    ]
    out, stats = image_round_trip(image_run, images, batch=4, lanes=3)
    assert all(np.array_equal(a, b) for a, b in zip(images, out, strict=True))
    assert stats["symbols"] == sum(im.size for im in images)


def test_image_size_is_within_one_percent_of_the_model_nll(image_run: Path) -> None:
    image = photo((48, 48))
    out, stats = image_round_trip(image_run, [image])
    assert np.array_equal(out[0], image)
    model, config = mc.load_model(image_run)
    rows, present = mc.image_patches(image, config.dataset.patch_size, "lossless")
    nll = -float(model.log_likelihood(torch.where(present, rows, MISSING)).sum()) / math.log(2)
    assert stats["nll_bits"] == pytest.approx(nll, rel=1e-9)
    assert 8 * (stats["bytes"] - stats["header_bytes"]) <= 1.01 * nll


def test_image_commands_keep_pixels_and_greyscale(image_run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pics"
    (folder / "sub").mkdir(parents=True)
    rgb = photo((16, 24))
    Image.fromarray(rgb).save(folder / "a.png")
    Image.fromarray(rgb).save(folder / "sub" / "b.jpg", quality=90)
    Image.fromarray(rgb[..., 1]).save(folder / "grey.png")  # mode L
    code, out, err = invoke(mc.compress_main, f"run_dir={image_run}", f"file={folder}")
    assert code == 0 and err == "", err
    code, out, err = invoke(mc.decompress_main, f"run_dir={image_run}",
                            f"file={tmp_path / 'pics.mpc'}", f"out={tmp_path / 'back'}")
    assert code == 0 and "wrote 3 images" in out
    for name, back in [("a.png", "a.png"), ("sub/b.jpg", "sub/b.png"), ("grey.png", "grey.png")]:
        source, decoded = Image.open(folder / name), Image.open(tmp_path / "back" / back)
        assert decoded.mode == source.mode
        assert np.array_equal(np.asarray(decoded), np.asarray(source)), name
    one = folder / "a.png"
    assert invoke(mc.compress_main, f"run_dir={image_run}", f"file={one}")[0] == 0
    code, _, _ = invoke(mc.decompress_main, f"run_dir={image_run}", f"file={one}.mpc",
                        f"out={tmp_path / 'one.png'}")
    assert code == 0 and np.array_equal(np.asarray(Image.open(tmp_path / "one.png")), rgb)


def test_images_that_cannot_be_coded_exactly_are_refused(image_run: Path, tmp_path: Path
                                                         ) -> None:
    rgba = tmp_path / "alpha.png"
    Image.fromarray(np.zeros((8, 8, 4), dtype=np.uint8)).save(rgba)
    code, _, err = invoke(mc.compress_main, f"run_dir={image_run}", f"file={rgba}")
    assert code == 2 and "is a RGBA image" in err and len(err.splitlines()) == 1
    lossy = tmp_path / "lossy_run"
    shutil.copytree(image_run, lossy)
    config = (lossy / "config.yaml").read_text()
    (lossy / "config.yaml").write_text(config.replace("transform: lossless", "transform: lossy"))
    code, _, err = invoke(mc.compress_main, f"run_dir={lossy}", f"file={rgba}")
    assert code == 2 and "lossy colour transform" in err
