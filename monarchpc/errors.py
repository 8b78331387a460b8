"""The errors a user can fix: each message names the setting or file to change."""

from __future__ import annotations


class ConfigError(ValueError):
    """An invalid setting (config key, override, argument); the message names the fix."""


class DataError(RuntimeError):
    """Missing, corrupt or mismatched data; the message says what to fetch or delete."""
