"""Durable file writes and checksums shared by checkpoints, run records and data caches.

:func:`atomic_write` writes a file through a temporary file in the same folder, fsyncs it,
renames it over the target and fsyncs the folder: a crash (kill -9, power loss) leaves
either the old file or the new one, never a partial one; a failed write (full disk) leaves
no temporary file behind and raises one :class:`~monarchpc.errors.DataError` line.

Files of a run directory are opened without following symbolic links (:func:`open_fd`,
``O_NOFOLLOW``): a link planted in a run directory (``run.lock``, ``metrics.jsonl``,
``train.log``, a temporary file) is refused with one line instead of truncating or
appending to the file it points at; :func:`atomic_write` renames over a link, replacing the
link itself, never its target.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

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


NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def link_error(path: Path) -> DataError:
    """The one line refusing a symbolic link where a run writes a file."""
    return DataError(f"{path} is a symbolic link (to {os.readlink(path)}); monarchpc does not "
                     f"write through links in a run directory: remove the link (rm {path}) "
                     f"and run again")


def refuse_link(path: Path) -> None:
    """Raise :func:`link_error` if ``path`` is a symbolic link."""
    if Path(path).is_symlink():
        raise link_error(Path(path))


def open_fd(path: Path, flags: int, mode: int = 0o644) -> int:
    """``os.open(path, flags | O_NOFOLLOW)``; a symbolic link at ``path`` raises one
    :class:`DataError` line (nothing is written through it)."""
    try:
        return os.open(path, flags | NOFOLLOW, mode)
    except OSError as err:
        if err.errno == errno.ELOOP or (NOFOLLOW and Path(path).is_symlink()):
            raise link_error(Path(path)) from None
        raise


def open_append(path: Path) -> BinaryIO:
    """``path`` opened for appending bytes (created if missing), never through a link."""
    return os.fdopen(open_fd(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab")


def write_failure(err: OSError | RuntimeError, folder: Path) -> str:
    """Why a write failed and what frees it: the file-size limit (``ulimit -f``, EFBIG)
    or the disk's free space, e.g. ``"No space left on device; 1.2 GB free on its disk"``."""
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if isinstance(err, OSError) and err.strerror:
        reason = err.strerror
    if (isinstance(err, OSError) and err.errno == errno.EFBIG) or "File too large" in reason:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        shown = "unlimited" if limit == resource.RLIM_INFINITY else f"{limit:,} bytes"
        return (f"{reason}: the file-size limit of this process is {shown}; raise it "
                f"(ulimit -f unlimited) or write to a file system that takes larger files")
    return f"{reason}; {free_space(folder)} free on its disk"


def read_json_object(path: Path, fix: str) -> dict[str, Any] | None:
    """The JSON object (a dict) in ``path``; None if there is no such file. A file that is
    not a JSON object raises one :class:`DataError` line ending with ``fix``."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is not valid JSON ({str(err).splitlines()[0][:80]}); "
                        f"{fix}") from None
    if not isinstance(value, dict):
        raise DataError(f"{path} holds a JSON {type(value).__name__}, not an object; {fix}")
    return value


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Create or replace ``path`` with what ``write(file)`` writes, atomically and durably.

    On any failure of the write (OSError such as ENOSPC, or torch.save's RuntimeError
    around one) the temporary file is removed, ``path`` is left as it was, and a
    :class:`DataError` names the file, the reason and the free space.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        if tmp.is_symlink():  # planted: never write through it
            tmp.unlink()
        with os.fdopen(open_fd(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except DataError:  # a link where the temporary file goes: the line says so
        raise
    except (OSError, RuntimeError) as err:
        tmp.unlink(missing_ok=True)
        raise DataError(f"cannot write {path} ({write_failure(err, path.parent)}): {path.name} "
                        f"was left as it was; free disk space (or fix the folder's "
                        f"permissions) and run again") from None
    fsync_dir(path.parent)


def file_sha256(path: Path) -> str:
    """The sha256 (hex) of a file's bytes, read in blocks of 1 MiB."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
