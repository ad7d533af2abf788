"""Signal handling shared by the long-running commands (`train`, `prepare`).

Both need the same two things from SIGINT/SIGTERM: install a handler only while the
work runs, on the main thread only (Python allows nothing else), and put the previous
handlers back afterwards, whatever happens. They differ only in what the handler does:

- `StopRequest`: training finishes the current optimizer step, saves a checkpoint and
  leaves; the signal only sets a flag that the loop reads at the next step boundary.
  A second SIGINT means "now": it raises KeyboardInterrupt.
- `sigterm_raises`: `prepare` has no step boundary, so SIGTERM raises `Terminated`
  (a SystemExit with status 143), which runs the cleanup of a half-built output.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

Handler = Callable[[int, FrameType | None], Any]


@contextmanager
def handlers(handler: Handler, signums: tuple[int, ...]) -> Iterator[bool]:
    """Install `handler` for `signums` while the block runs; yields whether it could.

    Off the main thread nothing is installed (signal.signal would raise) and the block
    runs with the handlers it had.
    """
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield True
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class StopRequest:
    """SIGINT/SIGTERM ask the loop to stop at its next boundary (`signum` is then set).

    Use as a context manager around the loop. A second SIGINT raises KeyboardInterrupt.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._ctx: Any = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopRequest:
        self._ctx = handlers(self._handle, (signal.SIGINT, signal.SIGTERM))
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)

    @property
    def name(self) -> str:
        """The signal's name (SIGTERM when none was received)."""
        return signal.Signals(self.signum or signal.SIGTERM).name


class Terminated(SystemExit):
    """Raised by `sigterm_raises` so that cleanup code (`except`/`finally`) runs."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(128 + signum)


def sigterm_raises() -> Any:
    """While active (main thread only), SIGTERM raises `Terminated` (exit status 143)."""
    return handlers(_raise_terminated, (signal.SIGTERM,))
