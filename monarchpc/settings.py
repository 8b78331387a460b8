"""The vocabulary of setting rules: each config group's owner declares its settings with it.

A :data:`Settings` table maps a key to (rule, what the key means). A rule returns ``None``
for a good value, else the requirement the value breaks. The owners: ``run/trainer.py``
(top-level keys, ``trainer``), ``learning/em.py`` (``optim``), ``structures.py``
(``model``), ``data/`` (``dataset``: every loader declares its own), ``init/initialize.py``
(``init``), ``run/tracking.py`` (``logger``); :mod:`monarchpc.config` checks a whole config
against them before any work.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from monarchpc.errors import ConfigError

Rule = Callable[[Any], str | None]
Settings = dict[str, tuple[Rule, str]]


def integer(low: int, none: bool = False) -> Rule:
    """An int >= ``low`` (bools are not ints here); ``none``: null allowed."""
    def rule(v: Any) -> str | None:
        if (v is None and none) or (isinstance(v, int) and not isinstance(v, bool)
                                    and v >= low):
            return None
        return f"must be an integer >= {low}" + (" or null" if none else "")
    return rule


def number(low: float, high: float = float("inf"), open_low: bool = False,
           none: bool = False) -> Rule:
    """A real number in [low, high] (or (low, high] with ``open_low``); ``none``: null."""
    def rule(v: Any) -> str | None:
        if v is None and none:
            return None
        if isinstance(v, int | float) and not isinstance(v, bool) and v <= high and (
                v > low if open_low else v >= low):
            return None
        interval = f"{'(' if open_low else '['}{low}, {high}]"
        return f"must be a number in {interval}" + (" or null" if none else "")
    return rule


def choice(*options: Any, none: bool = False) -> Rule:
    """One of ``options`` (of the same type); ``none``: null allowed."""
    def rule(v: Any) -> str | None:
        if (v is None and none) or (v in options and type(v) in {type(o) for o in options}):
            return None
        return f"must be one of {', '.join(map(str, options))}" + (" or null" if none else "")
    return rule


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


def text(none: bool = False) -> Rule:
    """A non-empty string; ``none``: null allowed."""
    def rule(v: Any) -> str | None:
        if (v is None and none) or (isinstance(v, str) and v.strip()):
            return None
        return "must be a non-empty string" + (" or null" if none else "")
    return rule


def list_of(item: Rule, what: str, length: int | None = None, none: bool = False,
            empty: bool = False) -> Rule:
    """A list of ``length`` (default: one or more, or any with ``empty``) values each
    passing ``item``, described as ``what``; ``none``: null allowed."""
    def rule(v: Any) -> str | None:
        if v is None and none:
            return None
        if isinstance(v, list | tuple) and (empty or v) and \
                (length is None or len(v) == length) and all(item(x) is None for x in v):
            return None
        count = length or ("any number of" if empty else "one or more")
        return f"must be a list of {count} {what}" + (" or null" if none else "")
    return rule


def sha256(v: Any) -> str | None:
    """64 lowercase hex digits (a sha256 to check a file against), or null (no check)."""
    ok = v is None or (isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None)
    return None if ok else "must be 64 lowercase hex digits, or null to skip the check"


def nullable(settings: Settings) -> Settings:
    """``settings`` with null allowed for every key (overrides where null means "inherit")."""
    def allow_null(rule: Rule) -> Rule:
        return lambda v: None if v is None else rule(v)
    return {k: (allow_null(rule), meaning) for k, (rule, meaning) in settings.items()}


def check_group(prefix: str, values: Mapping[str, Any], settings: Settings,
                owner: str = "") -> None:
    """Raise :class:`ConfigError` for the first key of ``values`` that ``settings`` has no
    rule for (a typo such as ``+optim.epoch=3`` would otherwise be ignored), or whose value
    breaks its rule. ``owner`` names the table in the message (e.g. "dataset lm1b")."""
    for key, value in values.items():
        if key not in settings:
            known = ", ".join(sorted(settings))
            raise ConfigError(f"{prefix}{key} is not a setting{' of ' + owner if owner else ''}"
                              f"; remove it or use one of: {known}")
        rule, meaning = settings[key]
        problem = rule(value)
        if problem is not None:
            raise ConfigError(f"{prefix}{key}={value!r}: {problem} ({meaning})")
