"""Where the project lives: the repository root, and relative paths resolved against it."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def resolve(path: str | Path) -> Path:
    """An absolute path: absolute paths stay, relative ones are taken from the current
    directory when they exist there, else from the repository root."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p.resolve()
    return (REPO_ROOT / p).resolve()
