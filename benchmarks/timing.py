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


def samples(
    fn: Callable[[], Any], device: str, *, warmup: int, iters: int, min_s: float = 0.0
) -> tuple[list[float], Any]:
    """(seconds per call for each of `iters` samples, the last call's result), after
    `warmup` untimed calls. A sample repeats `fn` until it has run at least `min_s`
    seconds and divides by the count, so that millisecond calls (a prefill of a tiny
    model) are not lost in the timer's and the scheduler's noise."""
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(iters):
        total, calls = 0.0, 0
        while calls == 0 or total < min_s:
            seconds, out = timed(fn, device)
            total += seconds
            calls += 1
        times.append(total / calls)
    return times, out
