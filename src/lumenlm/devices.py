"""Which torch device a command runs on: one rule for train, eval, generate, chat, serve.

It also says what the CPU can do, because the right precision depends on it. CPUs with
AMX-BF16 or AVX512-BF16 run bf16 matmuls natively (several times fp32's speed); others
(AVX2-only EPYCs, most laptops) emulate bf16 about 100x slower than fp32, so bf16 there
is a trap. `cpu_bf16_native` reads the flags; `bf16_slowdown` times a small probe matmul
once per process; `warn_slow_bf16` turns that into the one-line warning that `train
--precision bf16` and `--dtype bf16` print on such a CPU.
"""

from __future__ import annotations

import functools
import platform
import sys
import time

import torch

from lumenlm.errors import ConfigError


def resolve_device(name: str | None, local_rank: int = 0) -> torch.device:
    """ "auto"/None -> cuda, else mps, else cpu; "cuda" under torchrun -> cuda:<local_rank>."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                "device cuda requested but no CUDA GPU is available; use --device cpu"
            )
        return torch.device(f"cuda:{local_rank}") if name == "cuda" else torch.device(name)
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ConfigError("device mps requested but MPS is not available; use --device cpu")
    if name not in ("cpu", "mps"):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return torch.device(name)


def to_device(
    x: torch.Tensor, y: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a batch (inputs, targets) to `device`; on CUDA through pinned memory, so the
    copy is asynchronous and overlaps the GPU work already queued."""
    if device.type != "cuda":
        return x.to(device), y.to(device)
    return (
        x.pin_memory().to(device, non_blocking=True),
        y.pin_memory().to(device, non_blocking=True),
    )


BF16_FLAGS = ("amx_bf16", "avx512_bf16")
"""CPU flags (/proc/cpuinfo) that mean native bf16 matmuls."""


@functools.cache
def cpu_info() -> tuple[str, frozenset[str]]:
    """(model name, flags) of this CPU from /proc/cpuinfo; ("", empty) where unreadable."""
    name, flags = "", frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not name:
                    name = value.strip()
                elif key == "flags" and not flags:
                    flags = frozenset(value.split())
                if name and flags:
                    break
    except OSError:
        pass
    name = name or platform.processor()
    return name, flags


def cpu_bf16_native() -> bool | None:
    """True with AMX-BF16 or AVX512-BF16, False without, None if the flags are unknown
    (not Linux x86): then `bf16_slowdown` is the way to tell."""
    _, flags = cpu_info()
    if not flags:
        return None
    return any(flag in flags for flag in BF16_FLAGS)


@functools.cache
def bf16_slowdown(size: int = 512, repeats: int = 2) -> float:
    """How many times slower a (size x size) bf16 matmul is than fp32 on this CPU: the
    best of `repeats` timings of each, measured once per process. About 0.3 s where bf16
    is emulated (20-70x slower at model shapes on an AVX2 EPYC), milliseconds where it is
    native; `warn_slow_bf16` only probes when the flags do not already say "native".
    (256 is too small a probe: both dtypes are then overhead-bound and look alike.)"""
    a = torch.randn(size, size)
    b = torch.randn(size, size)

    def best(x: torch.Tensor, y: torch.Tensor) -> float:
        x @ y  # warm-up (first-call dispatch, allocation)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - t0)
        return min(times)

    return best(a.bfloat16(), b.bfloat16()) / max(best(a, b), 1e-9)


def warn_slow_bf16(device: torch.device | str, what: str) -> str | None:
    """On a CPU without native bf16, print (and return) one warning line for `what` (e.g.
    "--precision bf16"): measured slowdown and the fix. Silent on GPUs and native CPUs."""
    if torch.device(device).type != "cpu" or cpu_bf16_native() is True:
        return None
    slowdown = bf16_slowdown()
    if cpu_bf16_native() is None and slowdown < 2:
        return None  # flags unknown, and the probe says bf16 is not slow here
    name = cpu_info()[0] or "this CPU"
    line = (
        f"lumenlm: warning: {what} on {name}, which has no native bf16 (no amx_bf16 or "
        f"avx512_bf16): a probe matmul ran {slowdown:.0f}x slower than fp32; use fp32"
    )
    print(line, file=sys.stderr)
    return line
