"""The embedded default corpus: Python's own documentation, normalized the text8 way.

Every CPython installation ships ``pydoc_data.topics`` (the help() texts, about 375k
characters once normalized), so the demo needs no download.
"""

from __future__ import annotations

from monarchpc.data import Splits
from monarchpc.data.cache import text_record
from monarchpc.data.chars import (
    char_splits,
    encode,
    fraction_sizes,
    fractions_rule,
    normalize_text8,
)
from monarchpc.settings import Settings, integer


def corpus() -> str:
    """The normalized demo text (only ' ' and a-z), topics in sorted order."""
    from pydoc_data.topics import topics

    text = " ".join(normalize_text8(topics[name]) for name in sorted(topics))
    return " ".join(text.split())


def load(fractions: list[float] = (0.9, 0.05, 0.05), seq_len: int = 256) -> Splits:
    """The demo corpus split into consecutive train/dev/test spans by ``fractions``."""
    text = corpus()
    codes = encode(text)
    info = {"name": "demo", "source": "pydoc_data.topics", "chars": int(codes.size),
            "sources": [text_record("pydoc_data.topics", text.encode())]}
    return char_splits(codes, fraction_sizes(codes.size, fractions), seq_len, info)


OPTIONS: Settings = {
    "fractions": (fractions_rule, "train/dev/test shares of the text"),
    "seq_len": (integer(2), "characters per row; one has no transition to learn"),
}
"""The settings of ``dataset=demo`` (configs/dataset/demo.yaml)."""
