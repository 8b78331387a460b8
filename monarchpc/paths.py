"""Where the project lives: the repository root, and relative paths resolved against it."""

from __future__ import annotations

from pathlib import Path

from monarchpc.settings import Settings, text

REPO_ROOT = Path(__file__).resolve().parents[1]


def resolve(path: str | Path) -> Path:
    """An absolute path: absolute paths stay, relative ones are taken from the current
    directory when they exist there, else from the repository root."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p.resolve()
    return (REPO_ROOT / p).resolve()



PATHS: Settings = {
    "root": (text(), "the repository root (relative paths resolve against it)"),
    "data_dir": (text(), "downloads and data caches"),
    "output_dir": (text(), "run directories"),
    "shared_data": (text(), "developers: real corpora kept beside the project"),
}
"""The ``paths`` group (configs/paths/default.yaml)."""
