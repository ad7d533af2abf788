"""Wall-clock timing shared by the benchmarks (GPU work is synchronized around the call)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


def sync(device: str) -> None:
    """Wait for queued GPU work so it is counted where it was launched."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    """(seconds, result) of one call of `fn`."""
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out
