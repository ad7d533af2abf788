"""What /proc/cpuinfo says about this CPU (vendor, model name and flags), and sysfs its
last-level cache.

Why a module of its own: `lumenlm.devices` (torch's side of device handling) and
`lumenlm.mkl_shim` (which must decide before torch is imported) both read it,
`lumenlm.blas` sizes its probe by the cache, and this file imports nothing heavy.
"""

from __future__ import annotations

import functools
from typing import NamedTuple


class CPUInfo(NamedTuple):
    vendor: str
    """`vendor_id`, e.g. "AuthenticAMD" or "GenuineIntel"; "" where unknown."""
    name: str
    """`model name`; "" where unknown."""
    flags: frozenset[str]
    """The first processor's `flags`; empty where unknown (not Linux x86)."""


@functools.cache
def read() -> CPUInfo:
    """This CPU's first processor entry in /proc/cpuinfo ("" and empty where unreadable)."""
    found: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("vendor_id", "model name", "flags") and key not in found:
                    found[key] = value.strip()
                if len(found) == 3:
                    break
    except OSError:
        pass
    return CPUInfo(
        found.get("vendor_id", ""),
        found.get("model name", ""),
        frozenset(found.get("flags", "").split()),
    )


@functools.cache
def last_level_cache_bytes(root: str = "/sys/devices/system/cpu/cpu0/cache") -> int:
    """The size of cpu0's largest unified cache (the L3 on x86) from sysfs under
    `root`; 0 where unknown. On a VM this is what the hypervisor reports, which is what
    the kernel and the BLAS see."""
    best = 0
    for i in range(8):
        try:
            with open(f"{root}/index{i}/type", encoding="ascii") as f:
                kind = f.read().strip()
            with open(f"{root}/index{i}/size", encoding="ascii") as f:
                size = f.read().strip()
        except OSError:
            continue
        if kind != "Unified" or not size:
            continue
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1].upper(), 1)
        digits = size[:-1] if unit != 1 else size
        if digits.isdigit():
            best = max(best, int(digits) * unit)
    return best
