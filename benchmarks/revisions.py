"""A file of this repository as it was at a git revision: the "before" side of benchmarks
that compare today's code with an older commit's, run in the same process or beside it."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def source_at(rev: str, path: str) -> str:
    """The text of `path` (relative to the repository root) at `rev` (`git show`)."""
    return subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:{path}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
