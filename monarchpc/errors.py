"""The errors a run reports as one line (``monarchpc: error: ...``), each naming its fix.

* :class:`ConfigError`: a setting that cannot work (checked before any data or GPU work).
* :class:`DataError`: missing, corrupt or mismatched data (or a run directory's files).
* :class:`CheckpointError`: a checkpoint that cannot be written, or must not be loaded.
* :class:`DivergedError`: EM produced a non-finite log-likelihood or parameter.
* :class:`RunDirError`: a run directory, or a file it needs, is missing.
* :class:`UsageError`: a command-line argument or query of a command that cannot work.
* :class:`Interrupted`: a run stopped by a signal after its checkpoint (exit 128 + signal).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting that cannot work; the message names the setting and the fix."""


class DataError(RuntimeError):
    """Missing, corrupt or mismatched data; the message names the fix."""


class CheckpointError(DataError):
    """A checkpoint that cannot be written (full disk, ...) or read safely (corrupt, crafted)."""


class DivergedError(RuntimeError):
    """A non-finite log-likelihood or parameter; the message names the setting to change."""


class RunDirError(FileNotFoundError):
    """A run directory, or a file it needs, is missing; the message names the fix."""


class UsageError(ValueError):
    """A command-line argument or query that cannot work; the message names the fix."""


class Interrupted(RuntimeError):
    """A run stopped by a signal (Ctrl-C, SIGTERM, SLURM's SIGUSR2) at an update boundary,
    its checkpoint written; rerunning with resume=true continues it. A command ends with
    :attr:`exit_code`, 128 + the signal's number as a shell reports it (SIGINT: 130,
    SIGTERM: 143), so that schedulers and ``make a && make b`` see it did not finish."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def signal(self) -> str:
        """The signal's name (``"SIGTERM"`` for 15)."""
        return signal_name(self.signum)


def signal_name(signum: int) -> str:
    """``"SIGTERM"`` for 15 (the number itself if it names no signal)."""
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
