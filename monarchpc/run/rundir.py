"""The run directory: one run at a time, and nothing of a run rewritten by a rejected call.

* :class:`RunLock` holds an exclusive ``fcntl.flock`` on ``<run_dir>/run.lock`` for as long
  as the run lives; the file says who holds it (pid, host, start time). A second run with
  the same run directory fails at once with a line naming that pid and host. The kernel
  drops the lock when its process dies (kill -9 included), so the lock of a dead process
  is taken over; on file systems without flock the file's pid is checked instead (a
  dead process on this host: taken over). Holding the lock, nothing else writes in the
  directory, so leftover ``*.tmp`` files of a killed writer are removed. The lock file is
  opened without following links (a planted ``run.lock`` link is refused with one line,
  its target untouched).
* :func:`check_resume` says whether the run continues from its checkpoint: a fresh run
  (``resume=false``) over an existing checkpoint and ``resume=true`` without one are errors.
* :func:`write_hydra_files` writes what Hydra would write to ``.hydra/`` (config.yaml,
  hydra.yaml, overrides.yaml) once the run has passed its checks, for runs launched with
  ``hydra.output_subdir=null``, so that an invocation that is then rejected leaves an
  existing run's ``.hydra/`` as it was.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from monarchpc.errors import ConfigError
from monarchpc.files import TMP_SUFFIX, atomic_write, open_fd

log = logging.getLogger(__name__)

last_run_dir: Path | None = None
"""The run directory this process last locked (a SLURM job's run, for its requeue hook)."""

LOCK = "run.lock"
NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
"""flock errors of file systems that do not support it (the pid in the file decides)."""


def holder_info() -> dict[str, Any]:
    """Who this process is: pid, host and start time."""
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class RunLock:
    """An exclusive lock on a run directory (see the module docstring); a context manager.

    ``acquire`` raises :class:`ConfigError` naming the holder when another process holds it.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        while self.fd is None:
            fd = open_fd(self.path, os.O_RDWR | os.O_CREAT)  # never through a planted link
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = self._read_holder()
                for _ in range(10):  # a holder that has just locked writes its name next
                    if holder:
                        break
                    time.sleep(0.05)
                    holder = self._read_holder()
                raise ConfigError(self._held_message(holder)) from None
            except OSError as err:
                if err.errno not in NO_FLOCK:
                    os.close(fd)
                    raise
                self._check_without_flock(fd)
            # a releasing holder may have removed the file we locked: then lock the new one
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
            else:
                os.close(fd)
        previous = self._read_holder()
        if previous and previous.get("pid") is not None:
            log.warning(f"{self.path}: took over the lock of {self._stale(previous)}")
        global last_run_dir
        last_run_dir = self.run_dir
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, (json.dumps(holder_info()) + "\n").encode(), 0)
        os.fsync(self.fd)
        for tmp in self.run_dir.glob(f"*{TMP_SUFFIX}"):  # left by a writer that was killed
            tmp.unlink(missing_ok=True)
        return self

    @staticmethod
    def _stale(holder: dict[str, Any]) -> str:
        """Who left a lock that nobody holds, said truthfully: a process of this host that
        is still alive under that pid is another process (a reused pid, or a lock file
        copied with its directory), not one that ended."""
        pid, host = holder.get("pid"), holder.get("host")
        who = f"pid {pid} on {host}"
        if host != socket.gethostname():
            return f"{who} (another host), which no longer holds it"
        if isinstance(pid, int) and pid != os.getpid() and alive(pid):
            return (f"{who}, which does not hold it: pid {pid} is alive but is not that run "
                    f"(a reused pid, or a run directory copied with its lock file)")
        return f"{who}, which ended without releasing it"

    def _read_holder(self) -> dict[str, Any]:
        """The holder's pid/host/started from the lock file ({} if empty or unreadable)."""
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def _held_message(self, holder: dict[str, Any]) -> str:
        who = (f"pid {holder.get('pid')} on host {holder.get('host')} (since "
               f"{holder.get('started')})" if holder else "another process (just starting)")
        return (f"run directory {self.run_dir} is in use by {who}; wait for that run to end "
                f"or stop it, or choose another run_name")

    def _check_without_flock(self, fd: int) -> None:
        """No flock here: refuse if the file names a live process (any on another host)."""
        holder = self._read_holder()
        pid, host = holder.get("pid"), holder.get("host")
        if pid is None or pid == os.getpid():
            return
        if host != socket.gethostname() or alive(int(pid)):
            os.close(fd)
            raise ConfigError(self._held_message(holder))

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_resume(run_dir: Path, resume: bool) -> bool:
    """Whether the run continues from ``run_dir``'s checkpoint (``resume=true`` and one
    exists); :class:`ConfigError` for a fresh run over a checkpoint or a resume without one.
    """
    from monarchpc.checkpoint import FILENAME as CHECKPOINT  # here: the lock needs no torch

    exists = (Path(run_dir) / CHECKPOINT).is_file()
    if exists and not resume:
        raise ConfigError(f"{run_dir} already holds a run (its {CHECKPOINT}); pass resume=true "
                          f"to continue it, or choose another run_name")
    if resume and not exists:
        raise ConfigError(f"resume=true but {run_dir} holds no {CHECKPOINT}: there is no run "
                          f"to resume (check run_name; a run stopped before its first "
                          f"checkpoint starts again without resume=true)")
    return exists


def write_hydra_files(run_dir: Path, cfg: DictConfig) -> None:
    """Write ``.hydra/config.yaml`` (``cfg``, the composed config as the task received it)
    and, inside a Hydra app, ``hydra.yaml`` and ``overrides.yaml``, as Hydra does, atomically.
    """
    from hydra.core.hydra_config import HydraConfig

    files = {"config.yaml": cfg}
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.instance().cfg
        files["hydra.yaml"] = hydra_cfg
        files["overrides.yaml"] = hydra_cfg.hydra.overrides.task
    for name, content in files.items():
        text = OmegaConf.to_yaml(content)
        atomic_write(Path(run_dir) / ".hydra" / name, lambda f, t=text: f.write(t.encode()))
