"""Small file-system and process helpers shared by data, training and export (no torch)."""

from __future__ import annotations

import os
import shutil
import socket
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


class DirLock:
    """An exclusive lock on a folder (`fcntl.flock` on `<dir>/.lock`, which records the
    holder's pid and host), so that two processes never write one run at once.

    The kernel drops a flock when its process dies, however it dies, so a lock left by
    a killed process is no lock at all: the next taker gets it, and `stale_pid` says whose
    it was. `acquire` returns the pid of a live holder instead of waiting.
    """

    NAME = ".lock"

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / self.NAME
        self._fd: int | None = None
        self.stale_pid: int | None = None

    def acquire(self) -> int | None:
        """Take the lock; None on success, else the holder's pid (-1 when unrecorded)."""
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _recorded_pid(fd)
            os.close(fd)
            return -1 if holder is None else holder
        self.stale_pid = _recorded_pid(fd)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        except OSError:
            os.close(fd)  # drops the lock again: nothing is held after a failure
            raise
        self._fd = fd
        return None

    def release(self) -> None:
        """Drop the lock (the file stays; an unlocked file means nobody holds it)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.ftruncate(fd, 0)  # a clean release leaves no pid to call stale
            except OSError:
                pass
            finally:
                os.close(fd)  # closing drops the flock


def _recorded_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 64, 0).split()[0])
    except (IndexError, ValueError, OSError):
        return None
