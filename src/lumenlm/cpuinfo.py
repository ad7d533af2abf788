"""What /proc/cpuinfo says about this CPU: vendor, model name and flags.

Why a module of its own: `lumenlm.devices` (torch's side of device handling) and
`lumenlm.mkl_shim` (which must decide before torch is imported) both read it, and this
file imports nothing heavy.
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
