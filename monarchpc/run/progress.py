"""Progress that reads well on a terminal and in a log file.

On a terminal: tqdm bars, with log lines printed above them (never glued onto a bar).
Redirected to a file (or under a scheduler): no bars; one log line every ``every``
seconds and one at the end, each on its own line.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

log = logging.getLogger("monarchpc")


def interactive() -> bool:
    """Whether progress goes to a terminal (stderr is a TTY)."""
    return sys.stderr.isatty()


class LogProgress:
    """tqdm's ``update`` / ``set_postfix`` / ``close`` as occasional log lines."""

    def __init__(self, total: int, desc: str, initial: int = 0, unit: str = "it",
                 every: float = 60.0) -> None:
        self.total, self.desc, self.n, self.unit, self.every = total, desc, initial, unit, every
        self.start = self.last = time.monotonic()
        self.first, self.postfix = initial, ""

    def set_postfix(self, values: dict[str, Any]) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= self.every:
            self._report()

    def _report(self) -> None:
        self.last = time.monotonic()
        rate = (self.n - self.first) / max(self.last - self.start, 1e-9)
        eta = (self.total - self.n) / rate if rate > 0 else float("inf")
        left = "?" if eta == float("inf") else time.strftime("%H:%M:%S", time.gmtime(eta))
        log.info(f"{self.desc}: {self.n}/{self.total} {self.unit} ({rate:.2f} {self.unit}/s, "
                 f"{left} left){', ' + self.postfix if self.postfix else ''}")

    def close(self) -> None:
        if self.n > self.first and time.monotonic() - self.start >= self.every:
            self._report()


def bar(total: int, desc: str, initial: int = 0, unit: str = "it", enabled: bool = True,
        leave: bool = True) -> tqdm | LogProgress:
    """A progress bar on a terminal, else occasional log lines; silent if not ``enabled``."""
    if interactive() or not enabled:
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave,
                    disable=not enabled, dynamic_ncols=True)
    return LogProgress(total, desc, initial, unit)


@contextlib.contextmanager
def clean_logging() -> Iterator[None]:
    """Log lines printed above tqdm's bars on a terminal (a no-op otherwise)."""
    if not interactive():
        yield
        return
    with logging_redirect_tqdm(loggers=[logging.getLogger(), log]):
        yield
