"""The benchmarks' records: one JSON line per result, printed and written to a file.

Shared by the benchmark scripts (it imports nothing of Triton, so the scripts that run
under the Triton interpreter may import it before setting TRITON_INTERPRET).
"""

from __future__ import annotations

import json
from typing import Any


class JsonLines:
    """``record(row)`` prints ``row`` as one JSON line and writes it to ``path`` (flushed at
    once, so an interrupted run keeps its rows); no file when ``path`` is empty or None.
    ``mode``: ``w`` starts the file afresh, ``a`` appends."""

    def __init__(self, path: str | None, mode: str = "w") -> None:
        self.file = open(path, mode) if path else None  # noqa: SIM115 (closed in close())

    def __call__(self, row: dict[str, Any]) -> None:
        line = json.dumps(row)
        print(line, flush=True)
        if self.file:
            self.file.write(line + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()
