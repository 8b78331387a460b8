"""Data: text8 preparation (split, vocabulary, rows, checksum failures), local text, demo."""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from monarchpc.data import DataError, build_dataset, synthetic
from monarchpc.data import text8 as text8_data
from monarchpc.data.chars import decode, encode, normalize_text8
from monarchpc.data.demo import corpus
from monarchpc.paths import REPO_ROOT
from tests.helpers import compose_config, forward_log_likelihood


def fake_text8(tmp_path: Path, n: int = 4000, seed: int = 0) -> tuple[Path, bytes]:
    rng = np.random.default_rng(seed)
    raw = bytes(rng.choice(list(b" abcdefghijklmnopqrstuvwxyz"), size=n).tolist())
    zpath = tmp_path / "text8.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("text8", raw)
    return zpath, raw


def load_fake(zpath: Path, raw: bytes, root: Path, **overrides) -> object:
    options = {"path": str(zpath), "root": str(root), "download": False,
               "zip_size": zpath.stat().st_size, "text_size": len(raw),
               "sha256": hashlib.sha256(raw).hexdigest(), "split": [3000, 500, 500],
               "seq_len": 16} | overrides
    return text8_data.load(**options)


def test_text8_split_vocabulary_rows_and_cache(tmp_path: Path) -> None:
    zpath, raw = fake_text8(tmp_path)
    splits = load_fake(zpath, raw, tmp_path / "cache")
    assert splits.vocab_size == 27 and splits.metric == "bpc"
    assert splits.train.shape == (3000 // 16, 16)
    assert splits.dev.shape == (500 // 16, 16) and splits.test.shape == (500 // 16, 16)
    assert decode(splits.train.reshape(-1)) == raw[: 187 * 16].decode()
    assert decode(splits.dev[0]) == raw[3000:3016].decode()
    assert decode(splits.test_stream) == raw[3500:4000].decode()
    assert (tmp_path / "cache" / "text8.npy").is_file()
    again = text8_data.load(root=str(tmp_path / "cache"), download=False, split=[3000, 500, 500],
                            seq_len=16, text_size=len(raw), sha256=hashlib.sha256(raw).hexdigest())
    assert torch.equal(again.train, splits.train)  # served from the cache, no source needed
    with pytest.raises(DataError, match="not found"):  # a cache of other text is not text8's
        text8_data.load(root=str(tmp_path / "cache"), download=False, split=[3000, 500, 500])


def test_text8_checksum_and_size_failures_name_the_fix(tmp_path: Path) -> None:
    zpath, raw = fake_text8(tmp_path)
    with pytest.raises(DataError, match=r"checksum mismatch.*mattmahoney.net/dc/text8.zip"):
        load_fake(zpath, raw, tmp_path / "a", sha256="0" * 64)
    with pytest.raises(DataError, match=r"expected 31,344,016.*incomplete or corrupt"):
        load_fake(zpath, raw, tmp_path / "b", zip_size=31_344_016)
    with pytest.raises(DataError, match="holds 4,000 characters, expected 100,000,000"):
        load_fake(zpath, raw, tmp_path / "c", text_size=100_000_000)
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a valid zip"):
        load_fake(tmp_path / "bad.zip", raw, tmp_path / "d", zip_size=None)


def test_text8_missing_file_says_what_to_fetch_and_where(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        text8_data.load(root=str(tmp_path / "none"), download=False)
    message = str(err.value)
    assert "http://mattmahoney.net/dc/text8.zip" in message
    assert "31,344,016 bytes" in message and str(tmp_path / "none" / "text8.zip") in message


def test_text8_rejects_other_characters(tmp_path: Path) -> None:
    raw = b"Hello, World! " * 300
    (tmp_path / "text8").write_bytes(raw)
    with pytest.raises(DataError, match="not text8"):
        text8_data.load(path=str(tmp_path / "text8"), root=str(tmp_path / "r"), sha256=None,
                        text_size=None, split=[3000, 500, 500], seq_len=16)


def test_normalization_follows_text8() -> None:
    assert normalize_text8("Hello, World!  It's 1984.") == "hello world it s one nine eight four "
    text = "the quick brown fox"
    assert decode(encode(text)) == text
    assert encode(" az").tolist() == [0, 1, 26]
    with pytest.raises(DataError):
        encode("no capitals? NO")


@pytest.mark.parametrize("suffix", ["txt", "xz", "gz", "zip"])
def test_chars_reads_plain_and_compressed_files(tmp_path: Path, suffix: str) -> None:
    text = ("Probabilistic circuits, 2 kinds: dense & Monarch. " * 80).encode()
    path = tmp_path / f"corpus.{suffix}"
    if suffix == "xz":
        path.write_bytes(lzma.compress(text))
    elif suffix == "gz":
        path.write_bytes(gzip.compress(text))
    elif suffix == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("a.txt", text)
    else:
        path.write_bytes(text)
    splits = build_dataset({"name": "chars", "paths": [str(path)], "fractions": [0.8, 0.1, 0.1],
                            "seq_len": 32, "long_rows": 4})
    normalized = re.sub(" +", " ", normalize_text8(text.decode()))
    assert decode(splits.train.reshape(-1)) == normalized[: splits.train.numel()]
    assert splits.info["chars"] == len(normalized)


def test_chars_on_the_real_text8_prefix(text8_prefix: Path, tmp_path: Path) -> None:
    splits = build_dataset({"name": "chars", "paths": [str(text8_prefix)], "max_chars": 200_000,
                            "seq_len": 256, "cache_dir": str(tmp_path)})
    assert decode(splits.train[0, :30]) == " anarchism originated as a ter"[:30]
    assert splits.vocab_size == 27 and splits.train.shape[1] == 256
    assert len(list(tmp_path.glob("chars-*.npy"))) == 1


def test_demo_corpus_is_embedded_and_normalized() -> None:
    text = corpus()
    assert 300_000 < len(text) < 500_000
    assert set(text) <= set(" abcdefghijklmnopqrstuvwxyz")
    splits = build_dataset({"name": "demo", "long_rows": 25})
    assert splits.train.shape[1] == 256 and len(splits.dev) > 50


def test_unknown_dataset_and_bad_options_fail_clearly() -> None:
    with pytest.raises(DataError, match="unknown dataset 'text9'"):
        build_dataset({"name": "text9"})
    with pytest.raises(DataError, match="unexpected keyword argument 'seqlen'"):
        build_dataset({"name": "demo", "seqlen": 3})
    with pytest.raises(DataError, match="missing file"):
        build_dataset({"name": "chars", "paths": ["/nonexistent/corpus.txt"]})


def test_synthetic_data_records_the_generating_models_bpc() -> None:
    """``true_test_bpc`` is the generating HMM's NLL of the test rows, recomputed here by a
    log-space forward pass in float64 over its parameters; the rows come from that model
    (another HMM of the same shape scores them worse)."""
    splits = build_dataset({"name": "synthetic", "n_train": 64, "n_dev": 8, "n_test": 8})
    assert splits.train.shape == (64, 32) and int(splits.train.max()) < 6
    test = splits.test.long()

    def bpc(model: torch.nn.Module) -> float:
        model = model.double()
        with torch.no_grad():
            ll = forward_log_likelihood(model.initial, model.transition.dense()[0],
                                        model.emission, test)
        return float(-ll.sum() / (test.numel() * np.log(2)))

    truth = bpc(synthetic.true_model(8, 6, 1234))  # the loader's defaults
    assert splits.info["true_test_bpc"] == pytest.approx(truth, rel=1e-6)
    assert truth < bpc(synthetic.true_model(8, 6, 4321)) and truth < np.log2(6)


def chars(paths: list[Path], **options) -> object:
    return build_dataset({"name": "chars", "paths": [str(p) for p in paths], "seq_len": 16,
                          "fractions": [0.8, 0.1, 0.1], "long_rows": 2, **options})


@pytest.mark.parametrize("content", [
    bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)),  # binary
    ("Für Ärzte: Grüße aus Köln. " * 60).encode("latin-1"),  # not UTF-8 (3.7% bad)
    ("text in UTF-16 " * 60).encode("utf-16"),  # NUL after every letter
])
def test_chars_refuses_what_is_not_text_unless_allowed(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "input.bin"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"input\.bin is not UTF-8 text: .*dataset\.allow_non_text"
                       r"=true") as err:
        chars([path])
    assert "\n" not in str(err.value)
    assert chars([path], allow_non_text=True).train.numel() > 0


def test_chars_accepts_text_with_a_few_odd_bytes(tmp_path: Path) -> None:
    """2 bytes that are not UTF-8 text among ~2,000 (under the 1% refused) become one word
    break, and the rest is normalized as text8 is: the expected text is written out."""
    sentence = "Punctuation, digits (42) and accents: café, naïve! "
    raw = (sentence * 20 + "Punctu").encode() + b"\xff\x00" + (sentence[6:] +
                                                                sentence * 19).encode()
    path = tmp_path / "ok.txt"
    path.write_bytes(raw)
    normalized = "punctuation digits four two and accents caf na ve "  # one sentence
    expected = normalized * 20 + "punctu ation digits four two and accents caf na ve " + \
        normalized * 19
    splits = chars([path])
    assert splits.info["chars"] == len(expected) == 2001
    train = decode(splits.train.reshape(-1))
    assert train == expected[:len(train)] and len(train) == 1600  # 80% in rows of 16
    assert train[1000:1013] == "punctu ation "
    assert splits.info["sources"] == [
        {"name": "ok.txt", "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}]


def test_caches_are_atomic_and_rebuilt_when_cut_short(tmp_path: Path, caplog) -> None:
    path = tmp_path / "a.txt"
    path.write_text("the monarch circuit learns " * 200)
    first = chars([path], cache_dir=str(tmp_path / "cache"))
    [cache] = (tmp_path / "cache").glob("chars-*.npy")
    assert sorted(p.name for p in cache.parent.iterdir()) == [cache.name, cache.name + ".json"]
    cache.write_bytes(cache.read_bytes()[:200])  # truncated in place (a crash, a bad copy)
    again = chars([path], cache_dir=str(tmp_path / "cache"))
    assert "not usable" in caplog.text and torch.equal(again.train, first.train)
    assert again.info["sources"] == first.info["sources"]
    (cache.parent / (cache.name + ".json")).unlink()  # a cache of an older monarchpc
    assert torch.equal(chars([path], cache_dir=str(tmp_path / "cache")).train, first.train)
    assert (cache.parent / (cache.name + ".json")).is_file()


def test_a_truncated_text8_cache_without_its_source_gives_one_clear_line(tmp_path: Path
                                                                         ) -> None:
    zpath, raw = fake_text8(tmp_path)
    load_fake(zpath, raw, tmp_path / "root")
    cache = tmp_path / "root" / "text8.npy"
    cache.write_bytes(cache.read_bytes()[:1000])
    zpath.unlink()
    with pytest.raises(DataError, match=r"text8: not found .*text8\.zip") as err:
        text8_data.load(root=str(tmp_path / "root"), download=False, split=[3000, 500, 500],
                        seq_len=16, text_size=len(raw), sha256=hashlib.sha256(raw).hexdigest())
    assert "\n" not in str(err.value) and not cache.exists()


def test_the_data_fingerprint_catches_other_data_at_the_same_path(tmp_path: Path) -> None:
    from monarchpc.data.fingerprint import compare, data_fingerprint

    path = tmp_path / "corpus.txt"
    path.write_text("a first text about sum blocks and their flows " * 50)
    saved = data_fingerprint(chars([path]))
    compare(saved, data_fingerprint(chars([path])))  # the same data: no error
    assert saved["files"][0]["name"] == "corpus.txt"
    assert saved["splits"]["train"]["shape"] == [len(chars([path]).train), 16]
    path.write_text("another text of the very same length about blocks and their flow " * 35)
    with pytest.raises(DataError) as err:
        compare(saved, data_fingerprint(chars([path])))
    message = str(err.value)
    assert "file corpus.txt has" in message and "rows" in message and "\n" not in message
    assert "new run_name" in message
    demo = data_fingerprint(build_dataset({"name": "demo", "long_rows": 1}))
    with pytest.raises(DataError, match=r"name 'demo' \(checkpoint: 'chars'\).*file "
                                        r"corpus\.txt is no longer used"):
        compare(saved, demo)


def test_token_caches_are_verified_and_rebuilt(tmp_path: Path, caplog) -> None:
    """A cut-short packed cache is rebuilt, a broken cached tokenizer trained again."""
    rng = np.random.default_rng(0)
    words = ["sum", "block", "monarch", "circuit", "flow", "hidden", "state", "layer"]
    path = tmp_path / "sentences.txt"
    path.write_text("\n".join(" ".join(rng.choice(words, size=8)) for _ in range(400)))
    options = {"name": "lines", "path": str(path), "vocab_size": 24, "seq_len": 16,
               "cache_dir": str(tmp_path / "cache")}
    first = build_dataset(options)
    [packed] = (tmp_path / "cache" / "packed").glob("*.pt")
    [model] = (tmp_path / "cache" / "tokenizers").glob("*.model")
    assert first.info["sources"][0]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    packed.write_bytes(packed.read_bytes()[:100])
    model.write_bytes(model.read_bytes()[:50])
    again = build_dataset(options)
    assert "not usable" in caplog.text and "does not load" in caplog.text
    assert torch.equal(again.train, first.train) and torch.equal(again.test, first.test)


# --------------------------------------------------------------------------- text8 prefix
RUNS = REPO_ROOT / "docs" / "results" / "runs"
PREFIX_ROWS = {  # dataset=chars on the committed runs' prefix file: shapes and row hashes
    "train": ([43945, 256], "5b244365b9e855c60e03a5141ce04687850652563a896496ca072ae866ac998c"),
    "dev": ([2441, 256], "92ac8bdbc0753561a2756e3cbad23151419f42e24118412ccf8f71f891f2c88c"),
    "test": ([2441, 256], "98c0b09ffdb25cb3932878ec2ef645eafcddd4f0594bbd797d3dbe66532e3aa2"),
}


def text8_shaped_zip(path: Path, text: bytes) -> Path:
    """A zip shaped like the official text8.zip: one deflated member named ``text8``."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("text8", text)
    return path


def test_text8_prefix_from_the_official_zip_is_the_committed_runs_data(
        text8_prefix: Path, tmp_path: Path) -> None:
    """dataset=text8_prefix on a text8.zip whose first 12.5M characters are text8's gives the
    rows the committed text8-prefix runs trained on (dataset=chars on the prefix file)."""
    from monarchpc.data.fingerprint import data_fingerprint

    raw = lzma.decompress(text8_prefix.read_bytes())
    assert hashlib.sha256(raw).hexdigest() == text8_data.PREFIX_SHA256
    # the real text8 goes on after the prefix; what follows must not matter
    zpath = text8_shaped_zip(tmp_path / "text8.zip", raw + b" and the text goes on")
    splits = build_dataset({"name": "text8_prefix", "path": str(zpath), "zip_size": None,
                            "long_rows": 125})
    fingerprint = data_fingerprint(splits)
    assert {k: (v["shape"], v["sha256"]) for k, v in fingerprint["splits"].items()} == \
        PREFIX_ROWS
    assert fingerprint["files"] == [{"name": "text8[:12500000]", "size": 12_500_000,
                                     "sha256": text8_data.PREFIX_SHA256}]
    assert splits.info["name"] == "text8_prefix" and splits.info["file"] == "text8.zip"
    assert decode(splits.test_stream) == raw[11_875_000:12_500_000].decode()
    # the committed runs: dataset=chars on exactly this file, 12.5M characters, 90/5/5 %
    # split, rows of 256; their token count is 20 epochs of these training rows
    chars_splits = build_dataset({"name": "chars", "paths": [str(text8_prefix)],
                                  "long_rows": 125})
    assert data_fingerprint(chars_splits)["splits"] == fingerprint["splits"]
    assert torch.equal(chars_splits.test_stream, splits.test_stream)
    records = sorted((RUNS / "text8_prefix").glob("*/run.json"))
    assert len(records) >= 20
    for record in records:
        info = json.loads(record.read_text())
        config = yaml.safe_load((record.parent / "config.yaml").read_text())
        assert info["data"]["chars"] == 12_500_000
        assert info["data"]["sources"] == [{
            "name": text8_prefix.name, "size": text8_prefix.stat().st_size,
            "sha256": hashlib.sha256(text8_prefix.read_bytes()).hexdigest()}]
        assert config["dataset"]["fractions"] == [0.9, 0.05, 0.05]
        assert config["dataset"]["seq_len"] == 256 and config["dataset"]["long_rows"] == 125
        assert info["tokens"] == config["optim"]["epochs"] * splits.train.numel()


def test_committed_text8_prefix_runs_compose_from_the_user_command() -> None:
    """Each committed text8-prefix run's config, with dataset=text8_prefix in place of the
    developers' dataset=chars on a copy: the campaign line and its common overrides."""
    common = ["dataset=text8_prefix", "optim.epochs=20", "optim.schedule=linear",
              "trainer.precision=bf16", "trainer.eval_every=22", "trainer.eval_batch_size=1024"]
    jobs = {}
    for line in (RUNS.parent / "campaigns" / "text8_prefix.txt").read_text().splitlines():
        name, _, rest = line.split("#", 1)[0].partition(":")
        if rest.strip():
            jobs[name.strip()] = rest.split()
    checked = 0
    for config_file in sorted((RUNS / "text8_prefix").glob("*/config.yaml")):
        saved = yaml.safe_load(config_file.read_text())
        cfg = OmegaConf.to_container(compose_config(
            [*common, *jobs[config_file.parent.name]]), resolve=True)
        for group in ("model", "optim"):
            assert cfg[group] == saved[group], (config_file, group)
        for key in set(saved["init"]) - {"factor_runs", "cache_dir"}:  # (keys added since:
            assert cfg["init"][key] == saved["init"][key], (config_file, key)  # defaults)
        assert cfg["seed"] == saved["seed"]
        for key in ("fractions", "seq_len", "long_rows"):
            assert cfg["dataset"][key] == saved["dataset"][key]
        checked += 1
    assert checked >= 20


def test_text8_prefix_checks_what_it_reads(tmp_path: Path) -> None:
    """A generated prefix with its own hash loads; a wrong hash, a short or truncated file
    and a missing one each stop with one line naming text8.zip."""
    rng = np.random.default_rng(1)
    raw = bytes(rng.choice(list(b" abcdefghijklmnopqrstuvwxyz"), size=6000).tolist())
    zpath = text8_shaped_zip(tmp_path / "text8.zip", raw)
    options = {"path": str(zpath), "zip_size": None, "prefix_chars": 5000,
               "prefix_sha256": hashlib.sha256(raw[:5000]).hexdigest(), "seq_len": 16}
    splits = text8_data.load_prefix(**options)
    assert (splits.train.shape, splits.dev.shape, splits.test.shape) == \
        ((281, 16), (15, 16), (15, 16))  # 4500 / 250 / 250 characters
    assert decode(splits.train.reshape(-1)) == raw[:4496].decode()
    assert decode(splits.test_stream) == raw[4750:5000].decode()
    fails = [
        ({"prefix_sha256": "0" * 64}, r"first 5,000 characters of .*text8\.zip have sha256"),
        ({"prefix_chars": 7000, "prefix_sha256": None}, "holds 6,000 characters, fewer than "
                                                        r"dataset\.prefix_chars=7,000"),
        ({"zip_size": 31_344_016}, r"expected 31,344,016: the download is incomplete"),
        ({"path": str(tmp_path / "none.zip")}, "does not exist"),
    ]
    for change, message in fails:
        with pytest.raises(DataError, match=message) as err:
            text8_data.load_prefix(**{**options, **change})
        assert "mattmahoney.net/dc/text8.zip" in str(err.value)
        assert "\n" not in str(err.value)
    cut = tmp_path / "cut.zip"
    cut.write_bytes(zpath.read_bytes()[:1500])  # a download cut short
    with pytest.raises(DataError, match=r"cut\.zip .*truncated or corrupt.*text8\.zip"):
        text8_data.load_prefix(**{**options, "path": str(cut)})
    with pytest.raises(DataError, match=r"text8\.zip"):  # none in root, no download
        text8_data.load_prefix(root=str(tmp_path / "empty"), download=False)
