"""Small file-system and process helpers shared by data, training and export (no torch)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def replace_dir(tmp: Path, target: Path, old: Path) -> None:
    """Put the finished directory `tmp` in place of `target`, atomically for readers.

    An existing `target` is first renamed to `old` (so at every moment either the old
    or the new directory is at `target`, never neither), then removed.
    """
    if not target.exists():
        os.replace(tmp, target)
        return
    if old.exists():
        shutil.rmtree(old)
    os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` may still run on this host (True when that cannot be told)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OverflowError, OSError):  # PermissionError included
        return True  # exists but belongs to someone else, or cannot tell
    return True
