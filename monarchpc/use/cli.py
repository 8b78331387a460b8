"""The ``key=value`` command lines of ``sample``, ``score`` and ``compress``: parsing, help,
and one line on stderr (exit status 2) for a bad argument, run directory or data file."""

from __future__ import annotations

import sys
from typing import Any

from monarchpc.errors import ConfigError, DataError, RunDirError, UsageError

Options = dict[str, tuple[Any, str]]
"""Command-line options: name -> (default, one-line description); a default of None
marks a required option. Values take the type of their default."""


def parse_options(argv: list[str], options: Options, doc: str) -> dict[str, Any]:
    """``key=value`` arguments -> {key: value} typed as the defaults; ``--help`` prints
    ``doc`` and every option, then exits. A bad argument raises :class:`UsageError`."""
    if any(a in ("-h", "--help", "help") for a in argv):
        width = max(map(len, options))
        lines = [f"  {k:<{width}}  {h}" + ("" if d is None or d == "" else f" (default {d})")
                 for k, (d, h) in options.items()]
        print(doc.strip() + "\n\noptions (key=value):\n" + "\n".join(lines))
        raise SystemExit(0)
    out = {k: d for k, (d, _) in options.items()}
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq or key not in options:
            raise UsageError(f"unknown argument {arg!r}: use key=value with key one of "
                              f"{', '.join(options)} (--help describes them)")
        default = options[key][0]
        try:
            if isinstance(default, bool):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                out[key] = value.lower() in ("true", "1")
            else:
                out[key] = type(default)(value) if default is not None else value
        except ValueError:
            raise UsageError(f"{key}={value!r}: expected a {type(default).__name__}") from None
    missing = [k for k, v in out.items() if v is None]
    if missing:
        raise UsageError(f"missing {', '.join(f'{k}=...' for k in missing)} "
                          f"(--help lists the options)")
    return out


def run_cli(main: Any, argv: list[str] | None = None) -> None:
    """Run a command's ``main(argv)`` (default: the process's arguments); a bad argument,
    run directory or data file becomes one line on stderr and exit status 2."""
    try:
        main(sys.argv[1:] if argv is None else argv)
    except (RunDirError, UsageError, ConfigError, DataError) as err:
        print(f"monarchpc: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
