"""A file of this repository as it was at a git revision: the "before" side of benchmarks
that compare today's code with an older commit's, run in the same process or beside it."""

from __future__ import annotations

import subprocess
import sys
import types
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


def module_at(rev: str, path: str) -> types.ModuleType:
    """The Python module at `path` as it was at `rev`, executed here under its own name
    (registered in sys.modules, where dataclasses look their module up). Its imports
    resolve to today's package, so only that one file is old."""
    stem = Path(path).stem
    module = types.ModuleType(f"{stem}_at_{rev}")
    sys.modules[module.__name__] = module
    code = compile(source_at(rev, path), f"{stem}.py@{rev}", "exec")
    exec(code, module.__dict__)  # this repository's own history
    return module
