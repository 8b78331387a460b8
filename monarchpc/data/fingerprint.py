"""The data fingerprint: what a checkpoint records about its data, compared on resume.

A fingerprint is plain JSON-like values (it goes into the checkpoint): the data set's
name and vocabulary, its source files (name, size, sha256, as the loader recorded them in
``Splits.info["sources"]``), the SentencePiece model's sha256 (token data sets) and, for
each split, the shape and sha256 of its rows. A
resume on other data (the same path holding other text, another tokenizer, a changed
file) stops at :func:`compare` with one line saying what differs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import Tensor

from monarchpc.data import Splits
from monarchpc.errors import DataError

SPLITS = ("train", "dev", "test")


def rows_record(rows: Tensor) -> dict[str, Any]:
    """``{"shape", "sha256"}`` of a split's rows (N, T), any integer dtype."""
    array = np.ascontiguousarray(rows.cpu().numpy())
    return {"shape": list(array.shape), "sha256": hashlib.sha256(array).hexdigest()}


def data_fingerprint(splits: Splits) -> dict[str, Any]:
    """The fingerprint of loaded data (see the module docstring); hashes the rows once."""
    record = {"name": splits.info.get("name"), "vocab_size": splits.vocab_size,
              "files": [dict(f) for f in splits.info.get("sources", [])],
              "splits": {name: rows_record(getattr(splits, name)) for name in SPLITS}}
    if splits.info.get("tokenizer_sha256"):  # token data: the SentencePiece model too
        record["tokenizer_sha256"] = splits.info["tokenizer_sha256"]
    return record


def short(digest: str | None) -> str:
    return f"{digest[:12]}..." if digest else "none"


def differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What differs between two fingerprints, one phrase each ([] if they agree)."""
    out = []
    for key in ("name", "vocab_size"):
        if saved.get(key) != current.get(key):
            out.append(f"{key} {current.get(key)!r} (checkpoint: {saved.get(key)!r})")
    old = {f["name"]: f for f in saved.get("files", [])}
    new = {f["name"]: f for f in current.get("files", [])}
    for name in sorted(old.keys() - new.keys()):
        out.append(f"file {name} is no longer used")
    for name in sorted(new.keys() - old.keys()):
        out.append(f"file {name} is new")
    for name in sorted(old.keys() & new.keys()):
        a, b = old[name], new[name]
        if a.get("size") != b.get("size"):
            out.append(f"file {name} has {b.get('size'):,} bytes (checkpoint: {a.get('size'):,})")
        elif a.get("sha256") != b.get("sha256"):
            out.append(f"file {name} has sha256 {short(b.get('sha256'))} (checkpoint: "
                       f"{short(a.get('sha256'))})")
    a, b = saved.get("tokenizer_sha256"), current.get("tokenizer_sha256")
    if a and b and a != b:  # (checkpoints of before it was recorded: their rows still say it)
        out.append(f"the SentencePiece model has sha256 {short(b)} (checkpoint: {short(a)})")
    for split in SPLITS:
        a, b = saved.get("splits", {}).get(split, {}), current.get("splits", {}).get(split, {})
        if a.get("shape") != b.get("shape"):
            out.append(f"{split} rows {b.get('shape')} (checkpoint: {a.get('shape')})")
        elif a.get("sha256") != b.get("sha256"):
            out.append(f"{split} rows hold other tokens")
    return out


def compare(saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """Raise :class:`DataError` naming every difference between the checkpoint's
    fingerprint ``saved`` and the one of the data loaded now."""
    found = differences(saved, current)
    if found:
        raise DataError(f"cannot resume on other data than the run was trained on: "
                        f"{'; '.join(found)}; restore that data (or its path), or start a new "
                        f"run_name")
