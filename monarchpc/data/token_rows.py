"""Sentences -> SentencePiece tokens -> packed rows: the token-level pipeline (LM1B, text lines).

A sentence source gives three splits of raw sentences (one string per sentence). Then:

1. A SentencePiece model (unigram by default, as the flax LM1B example whose tokenizer
   D3PM used: ``character_coverage=1.0``, trained on the first ``max_chars`` characters of
   the training split) is trained once and cached in ``<cache_dir>/tokenizers/``, its
   file name keyed by the source and every setting that changes it, vocabulary included.
   Ids: 0 = unknown (piece ``<sp-unk>``, so that a corpus may define ``<unk>`` as a word),
   1 = ``</s>`` (EOS, the sentence separator), 2 = ``<s>`` (BOS, used only with
   ``add_bos``); the vocabulary size counts them. Training uses a fixed number of threads
   (:data:`SPM_THREADS`), so the model's bytes do not depend on the machine's cores; they do
   depend on the sentencepiece release (0.2.2 and 0.2.3 train different models from the same
   text). ``tokenizer_sha256`` makes a different model an error; a model of the text and
   settings of committed runs (:data:`REFERENCE_TOKENIZERS`) that differs from theirs is
   reported in one warning line.
2. Every sentence is encoded and followed by EOS (D3PM wraps sentences in ``<S> ... </S>``;
   ``add_bos=True`` gives that two-delimiter form). The sentences of a split, in order,
   make one stream of ids.
3. The stream is cut into rows of ``seq_len`` (128 for LM1B) with no padding: rows cross
   sentence boundaries (as D3PM's packing), and the last partial row (< seq_len ids) of
   each split is dropped. Concatenating the rows of a split gives back its stream minus
   that remainder.

Perplexity is exp(total NLL / total tokens) over every position of the packed rows:
word pieces, EOS separators (and BOS with ``add_bos``) and unknowns alike.

The packed splits are cached in ``<cache_dir>/packed/`` (a torch file, int16 for vocabularies
up to 32767), keyed by the source, the tokenizer file's checksum and the packing settings,
and verified on read (:mod:`monarchpc.data.cache`); a cached tokenizer that no longer
loads is trained again.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from monarchpc.data import DataError, Splits, rows
from monarchpc.data import cache as data_cache
from monarchpc.files import atomic_write, file_sha256
from monarchpc.paths import resolve
from monarchpc.settings import (
    Settings,
    boolean,
    choice,
    integer,
    list_of,
    number,
    sha256,
    text,
)

log = logging.getLogger(__name__)

UNK_ID, EOS_ID, BOS_ID = 0, 1, 2
UNK_PIECE = "<sp-unk>"
MODEL_TYPES = ("unigram", "bpe")
SPM_THREADS = 32
"""Threads of SentencePiece training, whatever the cores: its unigram trainer splits the
expected counts of each round between its threads and adds them up, so the model it writes
changes with the thread count (it was os.cpu_count(): a 2-core machine trained another model
than a 32-core one). 32 is what trained the committed WikiText-2 runs' tokenizer."""

REFERENCE_TOKENIZERS: dict[str, tuple[str, str]] = {
    # tokenizer name (text and settings, see build_token_splits) -> (sha256, who trained it)
    "lines-wikitext-2_valid-unigram4096-82b59a175837": (
        "7f856e0494f88d8cafd7dd6582a9a24db350125421a768924e388289304d0c54",
        "the committed runs of docs/results/runs/wikitext2 (sentencepiece 0.2.2, 32 threads)"),
}
"""Tokenizers of committed runs: a model trained again from the same text and settings
should have these bytes; if not, the tokens (and perplexities) differ from those runs'."""

Batches = Callable[[], Iterator[list[str]]]
"""A split of raw sentences: a function that starts a fresh pass over its batches."""


def digest(obj: Any, n: int = 12) -> str:
    """A short stable hash of a JSON-serializable object (for cache file names)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:n]


def compact_dtype(vocab_size: int) -> torch.dtype:
    """The smallest integer dtype holding ids in [0, vocab_size)."""
    return torch.int16 if vocab_size <= 2**15 else torch.int32


# --------------------------------------------------------------------------- SentencePiece
def sample_text(batches: Iterable[list[str]], max_chars: int) -> Iterator[str]:
    """The first sentences of ``batches`` up to about ``max_chars`` characters."""
    chars = 0
    for batch in batches:
        for s in batch:
            if chars >= max_chars:
                return
            chars += len(s) + 1
            yield s


def train_sentencepiece(sentences: Iterable[str], path: Path, vocab_size: int,
                        model_type: str = "unigram", character_coverage: float = 1.0,
                        user_defined_symbols: Iterable[str] = ()) -> Path:
    """Train a SentencePiece model on ``sentences`` and write it to ``path`` (atomically)."""
    import sentencepiece as spm

    if model_type not in MODEL_TYPES:
        raise DataError(f"unknown SentencePiece model_type {model_type!r}; use one of "
                        f"{MODEL_TYPES} (dataset.model_type)")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
            model_type=model_type, character_coverage=character_coverage,
            unk_id=UNK_ID, eos_id=EOS_ID, bos_id=BOS_ID, pad_id=-1, unk_piece=UNK_PIECE,
            user_defined_symbols=list(user_defined_symbols), max_sentence_length=1 << 16,
            num_threads=SPM_THREADS, minloglevel=2)
    except RuntimeError as err:
        raise DataError(
            f"SentencePiece training failed: {err}\nFix: lower dataset.vocab_size, use "
            f"dataset.model_type=bpe (it reaches larger vocabularies on little text), or "
            f"train on more text (dataset.max_chars, a larger training split)") from None
    atomic_write(path, lambda f: f.write(model.getvalue()))
    return path


def loads(path: Path) -> bool:
    """Whether the SentencePiece model file ``path`` loads (not truncated or corrupt)."""
    import sentencepiece as spm

    try:
        spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError):
        return False
    return True


def load_sentencepiece(path: Path, vocab_size: int) -> Any:
    """Load a SentencePiece model, checking its size and separator against the config."""
    import sentencepiece as spm

    if not path.is_file():
        raise DataError(f"SentencePiece model {path} not found; fix dataset.tokenizer or set "
                        f"it to null to train one from the training split")
    sp = spm.SentencePieceProcessor(model_file=str(path))
    if sp.get_piece_size() != vocab_size:
        raise DataError(
            f"SentencePiece model {path} has {sp.get_piece_size()} pieces but "
            f"dataset.vocab_size={vocab_size}; set dataset.vocab_size={sp.get_piece_size()} "
            f"or point dataset.tokenizer at a model of {vocab_size} pieces (or delete the "
            f"file to retrain it)")
    if sp.eos_id() < 0:
        raise DataError(f"SentencePiece model {path} has no EOS piece, which separates the "
                        f"sentences; train one with eos_id >= 0 (or set dataset.tokenizer=null)")
    return sp


def check_tokenizer(path: Path, sha: str, expected: str | None) -> None:
    """Raise DataError if the model ``path`` (sha256 ``sha``) is not the ``expected`` one;
    warn in one line if it differs from the committed runs' model of the same name."""
    import sentencepiece as spm

    version = f"sentencepiece {spm.__version__}, {SPM_THREADS} threads"
    if expected is not None and sha != expected:
        raise DataError(
            f"SentencePiece model {path.name} has sha256 {sha}, expected {expected} "
            f"(dataset.tokenizer_sha256): trained here with {version}, it gives other tokens; "
            f"train it with the sentencepiece release that made the expected one (delete "
            f"{path} first), point dataset.tokenizer at that model, or set "
            f"dataset.tokenizer_sha256=null to accept this one")
    reference = REFERENCE_TOKENIZERS.get(path.stem)
    if expected is None and reference is not None and sha != reference[0]:
        log.warning(f"tokenizer {path.name} has sha256 {sha[:12]}..., not {reference[0][:12]}..."
                    f" as trained by {reference[1]} from this text and these settings (here "
                    f"{version}): tokens and perplexities will differ from theirs")


# --------------------------------------------------------------------------- encode and pack
def encode_stream(sp: Any, batches: Iterable[list[str]], vocab_size: int,
                  add_bos: bool = False) -> tuple[np.ndarray, int]:
    """Encode sentences into one 1-D stream: ids of each sentence, then EOS.

    Returns (stream, number of sentences). ``stream`` is int16/int32 (see compact_dtype).
    """
    dtype = np.int16 if compact_dtype(vocab_size) == torch.int16 else np.int32
    parts, n = [], 0
    for batch in batches:
        # (encoding is per sentence: its result does not depend on the threads)
        ids = sp.encode(batch, add_bos=add_bos, add_eos=True, num_threads=os.cpu_count() or 1)
        total = sum(map(len, ids))
        parts.append(np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=total))
        n += len(batch)
    return (np.concatenate(parts) if parts else np.zeros(0, dtype)), n


def pack(stream: np.ndarray | Tensor, seq_len: int) -> Tensor:
    """Rows (N, seq_len) of ``stream`` in order, N = len // seq_len; the remainder is dropped."""
    return rows(torch.as_tensor(stream), seq_len)


# --------------------------------------------------------------------------- the pipeline
def build_token_splits(
    name: str, source: dict[str, Any], train: Batches, dev: Batches, test: Batches, *,
    vocab_size: int = 8192, model_type: str = "unigram", character_coverage: float = 1.0,
    max_chars: int = 10_000_000, user_defined_symbols: Iterable[str] = (),
    tokenizer: str | None = None, seq_len: int = 128, add_bos: bool = False,
    cache_dir: str | None = "data", tokenizer_sha256: str | None = None,
    tokenizer_text: Batches | None = None, tokenizer_source: dict[str, Any] | None = None,
) -> Splits:
    """Tokenize and pack three splits of sentences (see the module docstring), with caches.

    ``source`` identifies the raw data (paths, sizes, options that select sentences): it
    keys both caches. ``tokenizer``: an existing SentencePiece model file to use instead of
    training one (its size must equal ``vocab_size``). The tokenizer is trained on the
    first ``max_chars`` characters of ``tokenizer_text`` (default: ``train``), identified
    by ``tokenizer_source`` (default: ``source``), so that a capped training split can
    share the tokenizer of the full one. ``tokenizer_sha256``: the model's expected sha256
    (trained, cached or given), checked before any encoding.
    """
    if seq_len < 1:
        raise DataError(f"dataset.seq_len must be positive, got {seq_len}")
    if not cache_dir:
        raise DataError(f"{name}: dataset.cache_dir is null, but a token data set keeps its "
                        f"SentencePiece model (needed again to sample and score) and packed "
                        f"rows there; set dataset.cache_dir to a folder (default: data/)")
    cache = resolve(cache_dir)
    symbols = [str(s) for s in user_defined_symbols]
    if tokenizer is None:
        spm_settings = {"source": tokenizer_source or source, "vocab_size": vocab_size,
                        "model_type": model_type, "character_coverage": character_coverage,
                        "max_chars": max_chars, "user_defined_symbols": symbols}
        sp_name = f"{name}-{model_type}{vocab_size}-{digest(spm_settings)}.model"
        sp_path = cache / "tokenizers" / sp_name
        if sp_path.is_file() and not loads(sp_path):
            log.warning("cached tokenizer %s does not load; training it again", sp_path)
            sp_path.unlink()
        if not sp_path.is_file():
            log.info("training SentencePiece (%s, %d pieces) on the first %d characters of "
                     "the %s training split -> %s", model_type, vocab_size, max_chars, name,
                     sp_path)
            sample = sample_text((tokenizer_text or train)(), max_chars)
            train_sentencepiece(sample, sp_path, vocab_size, model_type, character_coverage,
                                symbols)
    else:
        sp_path = resolve(tokenizer)
    sp = load_sentencepiece(sp_path, vocab_size)
    sp_sha = file_sha256(sp_path)
    check_tokenizer(sp_path, sp_sha, tokenizer_sha256)

    pack_settings = {"source": source, "tokenizer_sha256": sp_sha, "seq_len": seq_len,
                     "add_bos": add_bos, "vocab_size": vocab_size}
    packed_name = f"{name}-v{vocab_size}-T{seq_len}-{digest(pack_settings)}.pt"
    packed_path = cache / "packed" / packed_name
    if data_cache.verified(packed_path) is not None:
        data = torch.load(packed_path, mmap=True, weights_only=True)
    else:
        data: dict[str, Any] = {"info": {}}
        for split, batches in (("train", train), ("dev", dev), ("test", test)):
            stream, n_sent = encode_stream(sp, batches(), vocab_size, add_bos)
            data[split] = pack(stream, seq_len)
            data["info"][split] = {"sentences": n_sent, "tokens": int(stream.size),
                                   "rows": len(data[split]),
                                   "dropped_tokens": int(stream.size % seq_len)}
            log.info("%s %s: %d sentences -> %d tokens -> %d rows of %d", name, split, n_sent,
                     stream.size, len(data[split]), seq_len)
        data_cache.write(packed_path, lambda f: torch.save(data, f), sources=[])
    for split in ("train", "dev", "test"):
        if len(data[split]) == 0:
            raise DataError(f"{name}: the {split} split has fewer than seq_len={seq_len} "
                            f"tokens; use more data or a smaller dataset.seq_len")
    import sentencepiece as spm

    info = {"name": name, "source": source, "tokenizer": str(sp_path),
            "tokenizer_sha256": sp_sha, "sentencepiece": spm.__version__,  # (the one in use)
            "model_type": model_type, "vocab_size": vocab_size,
            "seq_len": seq_len, "separator": "EOS id 1 after every sentence",
            "add_bos": add_bos, "cache": str(packed_path),
            "token_count": "every position of the packed rows (separators included)",
            **{f"{k}_split": v for k, v in data["info"].items()}}
    return Splits(train=data["train"], dev=data["dev"], test=data["test"],
                  vocab_size=vocab_size, metric="ppl", test_stream=None, info=info)


def take(batches: Iterable[list[str]], start: int = 0, stop: int | None = None,
         ) -> Iterator[list[str]]:
    """Sentences ``start:stop`` (global indices) of a stream of batches, still in batches."""
    seen = 0
    for batch in batches:
        lo, hi = seen, seen + len(batch)
        seen = hi
        if stop is not None and lo >= stop:
            return
        a, b = max(start - lo, 0), len(batch) if stop is None else min(stop - lo, len(batch))
        if a < b:
            yield batch[a:b]


TOKEN_OPTIONS: Settings = {
    "vocab_size": (integer(2), "SentencePiece pieces (ids 0 unknown, 1 </s>, 2 <s>)"),
    "model_type": (choice("unigram", "bpe"), "the SentencePiece model"),
    "character_coverage": (number(0.0, 1.0, open_low=True), "SentencePiece coverage"),
    "max_chars": (integer(1), "characters the tokenizer is trained on"),
    "user_defined_symbols": (list_of(text(), "strings", empty=True), "pieces kept whole"),
    "tokenizer": (text(none=True), "an existing SentencePiece model; null trains one"),
    "tokenizer_sha256": (sha256, "expected sha256 of the SentencePiece model; null: any"),
    "seq_len": (integer(2), "tokens per packed row"),
    "add_bos": (boolean, "start every sentence with <s>"),
    "cache_dir": (text(none=True), "folder of the tokenizers and packed rows"),
}
"""The tokenizer and packing settings of the token data sets (lm1b, lines)."""
