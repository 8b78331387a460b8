"""Stopping a run cleanly: signals become a flag checked between micro-batches."""

from __future__ import annotations

import contextlib
import logging
import signal
from typing import Any

log = logging.getLogger("monarchpc")


class StopRequest:
    """Turns SIGINT/SIGTERM/SIGUSR2 (the warning that SLURM jobs of hydra/launcher=slurm get
    before their time limit) into a flag checked between micro-batches (a second Ctrl-C
    interrupts at once). ``deferred`` (several ranks): a signal only sets ``pending``, and
    the loop sets ``requested`` once all ranks have agreed on it at an update boundary."""

    def __init__(self, deferred: bool = False) -> None:
        self.requested = False
        self.pending = False
        self.deferred = deferred
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.pending and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.pending = True
        self.requested = self.requested or not self.deferred
        log.warning("stop requested: finishing at the next update boundary (Ctrl-C again to "
                    "abort without a checkpoint)")

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

