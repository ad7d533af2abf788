"""One-line messages to stderr for things the user should know (warnings, notes)."""

from __future__ import annotations

import sys


def warn(message: str) -> None:
    """Print a one-line warning to stderr."""
    print(f"lumenlm: warning: {message}", file=sys.stderr, flush=True)


def info(message: str) -> None:
    """Print a one-line progress note to stderr (stdout stays free for results)."""
    print(f"lumenlm: {message}", file=sys.stderr, flush=True)
