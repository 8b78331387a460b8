"""Durable file writes and checksums shared by checkpoints, run records and data caches.

:func:`atomic_write` writes a file through a temporary file in the same folder, fsyncs it,
renames it over the target and fsyncs the folder: a crash (kill -9, power loss) leaves
either the old file or the new one, never a partial one; a failed write (full disk) leaves
no temporary file behind and raises one :class:`~monarchpc.errors.DataError` line.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from monarchpc.errors import DataError

TMP_SUFFIX = ".tmp"


def tmp_path(path: Path) -> Path:
    """The temporary file of ``path`` for this process: ``<name>.<pid>.tmp`` beside it."""
    return path.with_name(f"{path.name}.{os.getpid()}{TMP_SUFFIX}")


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def free_space(folder: Path) -> str:
    """Free space on the disk holding ``folder``, e.g. ``"1.2 GB"`` (or ``"unknown"``)."""
    try:
        return f"{shutil.disk_usage(folder).free / 1e9:.1f} GB"
    except OSError:
        return "unknown"


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Create or replace ``path`` with what ``write(file)`` writes, atomically and durably.

    On any failure of the write (OSError such as ENOSPC, or torch.save's RuntimeError
    around one) the temporary file is removed, ``path`` is left as it was, and a
    :class:`DataError` names the file, the reason and the free space.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        tmp.unlink(missing_ok=True)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"cannot write {path} ({reason}; {free_space(path.parent)} free on "
                        f"its disk): {path.name} was left as it was; free disk space (or fix "
                        f"the folder's permissions) and run again") from None
    fsync_dir(path.parent)


def file_sha256(path: Path) -> str:
    """The sha256 (hex) of a file's bytes, read in blocks of 1 MiB."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
