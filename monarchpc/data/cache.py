"""Data caches that are written atomically and verified before they are used.

A cache file (an ``.npy`` array, a torch file of packed rows, ...) is written with
:func:`monarchpc.files.atomic_write`, then described by a sidecar ``<file>.json``: its
size, its sha256 and ``sources``, the files it was built from (name, size, sha256; see
:func:`source_record`), which the data fingerprint reuses without reading them again. A
cache whose sidecar is missing, or whose size or checksum does not match (a file cut
short by a crash, a copy gone wrong, a cache of an older monarchpc), is removed with a
warning and built again by its loader; so is an ``.npy`` cache whose sidecar matches but
that numpy cannot read as a plain array (an object array, which would need pickle, or a
damaged header): a cache never runs code and never ends a run in a traceback.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from monarchpc.files import atomic_write, file_sha256

log = logging.getLogger(__name__)


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def source_record(path: Path) -> dict[str, Any]:
    """``{"name", "size", "sha256"}`` of a source file; a folder gets one record for all its
    files (total size, sha256 over their relative paths and checksums)."""
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file())
        h = hashlib.sha256()
        for f in files:
            h.update(f"{f.relative_to(path)}\0{file_sha256(f)}\n".encode())
        return {"name": path.name, "size": sum(f.stat().st_size for f in files),
                "sha256": h.hexdigest(), "files": len(files)}
    return {"name": path.name, "size": path.stat().st_size, "sha256": file_sha256(path)}


def text_record(name: str, data: bytes) -> dict[str, Any]:
    """The source record of content that has no file of its own (e.g. a decompressed text)."""
    return {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def write(path: Path, write_file: Callable[[BinaryIO], None],
          sources: list[dict[str, Any]]) -> None:
    """Write the cache ``path`` with ``write_file(f)``, then its sidecar, both atomically."""
    sidecar(path).unlink(missing_ok=True)  # a crash between the two leaves no stale sidecar
    atomic_write(path, write_file)
    meta = {"size": path.stat().st_size, "sha256": file_sha256(path), "sources": sources}
    text = json.dumps(meta, indent=1) + "\n"
    atomic_write(sidecar(path), lambda f: f.write(text.encode()))


def verified(path: Path) -> list[dict[str, Any]] | None:
    """The ``sources`` of a good cache at ``path``; None if there is none or it is bad (then
    the cache and its sidecar are removed, so that the caller builds it again)."""
    if not path.is_file():
        return None
    problem = None
    try:
        meta = json.loads(sidecar(path).read_text())
        if path.stat().st_size != meta["size"]:
            problem = f"{path.stat().st_size:,} bytes, expected {meta['size']:,}"
        elif file_sha256(path) != meta["sha256"]:
            problem = "checksum mismatch"
    except (OSError, ValueError, KeyError, TypeError) as err:
        problem = f"no valid {sidecar(path).name} ({type(err).__name__})"
    if problem is None:
        return list(meta["sources"])
    discard(path, problem)
    return None


def save_array(path: Path, array: np.ndarray, sources: list[dict[str, Any]]) -> None:
    """Cache ``array`` as ``.npy`` at ``path`` (see :func:`write`)."""
    write(path, lambda f: np.save(f, np.ascontiguousarray(array)), sources)


def discard(path: Path, problem: str) -> None:
    """Remove a cache and its sidecar with a warning (the caller builds it again)."""
    log.warning(f"data cache {path} is not usable ({problem}); building it again")
    path.unlink(missing_ok=True)
    sidecar(path).unlink(missing_ok=True)


def read_npy(path: Path, mmap: bool = False) -> np.ndarray | None:
    """The plain (numeric) array of an ``.npy`` file, never unpickled; None (the file
    removed, see :func:`discard`) if it holds anything else or cannot be read."""
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        discard(path, f"{type(err).__name__}: {str(err).splitlines()[0][:80] if str(err) else ''}")
        return None
    if not isinstance(array, np.ndarray) or array.dtype.hasobject:
        discard(path, "not a plain numeric array")
        return None
    return array


def load_array(path: Path, mmap: bool = False
               ) -> tuple[np.ndarray, list[dict[str, Any]]] | None:
    """(array, sources) of a verified ``.npy`` cache (memory-mapped with ``mmap``), or None."""
    sources = verified(path)
    if sources is None:
        return None
    array = read_npy(path, mmap)
    return None if array is None else (array, sources)


def cached_array(path: Path, make: Callable[[], tuple[np.ndarray, list[dict[str, Any]]]],
                 mmap: bool = False) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The verified cache at ``path``, or ``make()`` -> (array, sources) saved there first."""
    found = load_array(path, mmap)
    if found is not None:
        return found
    array, sources = make()
    save_array(path, array, sources)
    return np.load(path, mmap_mode="r" if mmap else None), sources
