"""Stopping a run cleanly: signals become a flag checked between micro-batches.

A run stopped by a signal writes its checkpoint at the next update boundary, then ends
with :class:`~monarchpc.errors.Interrupted`: the command exits 128 + the signal's number
(Ctrl-C 130, SIGTERM 143, SLURM's SIGUSR2 140), never 0, so a scheduler or ``make a &&
make b`` can tell it from a finished run. Under submitit (``hydra/launcher=slurm``) the
signal is then handed to submitit's own handler (:func:`hand_over`), which requeues the
job; the requeued job resumes from the checkpoint (:mod:`monarchpc.run.requeue`).

:func:`stop_with_parent` makes a child process (a factor run of ``init.parallel=true``)
stop like this when its parent dies, instead of training on unseen.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

log = logging.getLogger("monarchpc")

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)
PR_SET_PDEATHSIG = 1
"""prctl option (linux/prctl.h): the signal a process gets when its parent dies."""


class StopRequest:
    """Turns SIGINT/SIGTERM/SIGUSR2 (the warning that SLURM jobs of hydra/launcher=slurm get
    before their time limit or on preemption) into a flag checked between micro-batches (a
    second Ctrl-C interrupts at once). ``signum``: the first signal received (None: none).
    ``deferred`` (several ranks): a signal only sets ``pending``, and the loop sets
    ``requested`` once all ranks have agreed on it at an update boundary."""

    def __init__(self, deferred: bool = False) -> None:
        self.requested = False
        self.pending = False
        self.deferred = deferred
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.pending and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.pending = True
        self.signum = self.signum or signum
        self.requested = self.requested or not self.deferred
        log.warning(f"stop requested ({signal.Signals(signum).name}): finishing at the next "
                    f"update boundary (Ctrl-C again to abort without a checkpoint)")

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def hand_over(signum: int) -> None:
    """Pass a signal the run has already acted on (checkpoint written) to the handler that
    was installed before the run, if that is a Python function: submitit's, which for
    SIGUSR2 (time limit or preemption) requeues the job and for SIGTERM re-saves the job's
    submission so that a requeue by SLURM resumes it (both through the launcher's
    checkpoint hook, hydra_plugins/monarchpc_launcher); both then exit. Outside submitit (the
    default handlers) this does nothing."""
    usr2 = signal.getsignal(signal.SIGUSR2)
    owner = getattr(usr2, "__self__", None)
    if signum == signal.SIGUSR2 and callable(usr2) and owner is not None:
        usr2(signum, None)
    elif signum == signal.SIGTERM and callable(getattr(owner, "checkpoint_and_exit", None)):
        owner.checkpoint_and_exit(signum, None)


def stop_with_parent(parent: int, poll_seconds: float = 1.0) -> None:
    """Send this process SIGTERM (a clean stop, with a checkpoint) when process ``parent``
    dies: ``prctl(PR_SET_PDEATHSIG)`` on Linux, else a thread polling the parent pid."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0:
                if os.getppid() != parent:  # it died before prctl took effect
                    os.kill(os.getpid(), signal.SIGTERM)
                return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stop-with-parent", daemon=True).start()
