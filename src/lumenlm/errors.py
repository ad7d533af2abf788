"""User-facing errors.

A `LumenError` carries a one-line message that says what is wrong and what to do.
The CLI prints it without a traceback (unless `--debug`) and exits non-zero.
This module imports nothing else from lumenlm so every layer may use it.
"""

from __future__ import annotations


class LumenError(Exception):
    """An error caused by user input (bad config, missing file, corrupt data)."""

    exit_code: int = 2


class ConfigError(LumenError, ValueError):
    """A configuration value is invalid or does not fit the rest of the config."""


class DataError(LumenError):
    """Input data is missing, empty, unreadable or inconsistent."""


class CheckpointError(LumenError):
    """A model or checkpoint file is missing, corrupt or does not match its config."""


def first_line(exc: BaseException, default: str | None = None) -> str:
    """The first line of an exception's message (or `default`, else its type name),
    for one-line user errors that wrap a library's multi-line message."""
    text = str(exc).strip()  # a message that opens with a newline still has a first line
    if text:
        return text.splitlines()[0]
    return type(exc).__name__ if default is None else default
