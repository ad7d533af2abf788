"""Which torch device a command runs on: one rule for train, eval, generate, chat, serve.

It also says what the CPU can do, because the right precision depends on it. CPUs with
AMX-BF16 or AVX512-BF16 run bf16 matmuls natively (several times fp32's speed); others
(AVX2-only EPYCs, most laptops) emulate bf16 about 100x slower than fp32, so bf16 there
is a trap. `cpu_bf16_native` reads the flags; `bf16_slowdown` times a small probe matmul
once per process; `warn_slow_bf16` turns that into the one-line warning that `train
--precision bf16` and `--dtype bf16` print on such a CPU. `--precision auto` reads
`cpu_bf16_native` first (`train.precision`): without native bf16 it never probes.

`configure_threads` sizes torch's CPU thread pool from the cores the process may use
(affinity mask, cgroup CPU quota, physical cores), which torch itself does not read.
"""

from __future__ import annotations

import functools
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

from lumenlm import cpuinfo
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


def cpu_info() -> tuple[str, frozenset[str]]:
    """(model name, flags) of this CPU from /proc/cpuinfo (`lumenlm.cpuinfo`); the name
    falls back to `platform.processor()`, the flags to empty."""
    info = cpuinfo.read()
    return info.name or platform.processor(), info.flags


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


# -- CPU threads -----------------------------------------------------------------------
# torch sizes its intra-op pool from the CPUs it can see, not from the CPUs it may use:
# in a container with a CPU quota (cgroup cpu.max / cfs_quota_us) or a restricted
# affinity mask it starts more OpenMP threads than it gets cores, and every parallel
# region then waits for the thread that was descheduled. On hyperthreaded CPUs the
# second thread of a core shares its FMA units, so matmuls gain nothing from it.


def _cgroup_cpu_quota() -> float | None:
    """CPUs allowed by the cgroup's CPU quota (v2 `cpu.max`, v1 `cfs_quota_us`), or None."""
    candidates = [
        ("/sys/fs/cgroup/cpu.max", None),
        ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
        (
            "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us",
            "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us",
        ),
    ]
    for quota_path, period_path in candidates:
        try:
            text = Path(quota_path).read_text().split()
            if period_path is None:
                quota, period = text[0], text[1]
            else:
                quota, period = text[0], Path(period_path).read_text().split()[0]
        except (OSError, IndexError):
            continue
        if quota == "max" or int(quota) <= 0:
            return None
        return int(quota) / int(period)
    return None


def _physical_cores(cpus: set[int]) -> int | None:
    """Distinct (package, core) pairs among `cpus` (Linux sysfs), or None if unknown."""
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            core = (topo / "core_id").read_text().strip()
            package = (topo / "physical_package_id").read_text().strip()
        except OSError:
            return None
        cores.add((package, core))
    return len(cores) or None


def usable_cpu_cores() -> int:
    """Cores this process may run on: its affinity mask, capped by the cgroup CPU quota,
    counting physical cores (not hyperthreads) where the topology is readable."""
    try:
        cpus = set(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = set(range(os.cpu_count() or 1))
    n = _physical_cores(cpus) or len(cpus)
    quota = _cgroup_cpu_quota()
    if quota is not None:
        n = min(n, max(1, math.floor(quota)))
    return max(1, n)


def configure_threads(threads: int | None = None) -> tuple[int, str]:
    """Set torch's intra-op threads for a lumenlm process; returns (threads, why).

    An explicit `threads` (`--threads`) wins; then LUMENLM_THREADS; then the user's own
    OMP_NUM_THREADS, which is left to torch; else the usable physical cores.

    The choice never depends on how busy the host is at start-up: the thread count can
    change the order of floating-point reductions, and a run and its resume must compute
    the same numbers. On a host that other jobs already keep busy, fewer threads are much
    faster (a librarian-1.3m step: 1.53 s with 1 thread, 3.53 s with 2, on a 2-core EPYC at
    load ~7, benchmarks/bench_threads.py): pass `--threads 1` there.
    """
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {threads}; pass a positive count")
        torch.set_num_threads(threads)
        return threads, "--threads"
    env = os.environ.get("LUMENLM_THREADS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ConfigError(f"LUMENLM_THREADS must be a positive integer, got {env!r}; fix it")
        torch.set_num_threads(int(env))
        return int(env), "LUMENLM_THREADS"
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads(), "OMP_NUM_THREADS"
    n = usable_cpu_cores()
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return n, "usable cores"
