"""Keep freed memory in the process: glibc malloc tuned for training loops.

Why: glibc serves every allocation above `M_MMAP_THRESHOLD` (128 KiB, adapting up to
32 MiB) with a fresh `mmap` and returns it to the kernel on `free`; memory freed at the
top of the heap beyond `M_TRIM_THRESHOLD` is trimmed back too. A training step
allocates and frees the same large temporaries (logits, their gradients, activations)
every step, so each step page-faults them in again: about 130,000 minor faults per
librarian-1.3m step on a 2-core AMD EPYC, and much of the step's time. tcmalloc keeps
such memory cached; so does glibc itself when told to, with no extra library:

    M_MMAP_MAX = 0           large blocks come from the heap, not from mmap
    M_TRIM_THRESHOLD = 1 GiB freed memory stays mapped for the next step
    M_TOP_PAD = 64 MiB       the heap grows in large steps

`tune_malloc()` sets these once, through `mallopt`, at the start of each `lumenlm`
process (the CLI calls it before any heavy import). The cost is that a process keeps
its peak heap until it exits instead of returning it early. Set
`LUMENLM_MALLOC=system` (or pass `--system-malloc`) to leave glibc's defaults alone, for
example to compare, or when an allocator is preloaded (`LD_PRELOAD=...tcmalloc...`),
which is detected and left alone as well. Measured figures: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4

SETTINGS = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 1 << 30), (M_TOP_PAD, 64 << 20))
"""(mallopt parameter, value) pairs applied by `tune_malloc`, in order."""

OFF_VALUES = {"system", "default", "off", "0", "no"}

_state: str | None = None


def tune_malloc(enabled: bool = True) -> str:
    """Apply `SETTINGS` to glibc malloc once per process; return what was done.

    Returns "tuned", or why not: "disabled" (`enabled=False` or `LUMENLM_MALLOC=system`),
    "preloaded" (another allocator is in LD_PRELOAD), "not glibc" (macOS, musl, Windows),
    or "failed" (mallopt refused a value). Never raises: a slower process is better than
    none. Later calls return the first call's answer.
    """
    global _state
    if _state is not None:
        return _state
    _state = _apply(enabled)
    return _state


def _apply(enabled: bool) -> str:
    if not enabled or os.environ.get("LUMENLM_MALLOC", "").strip().lower() in OFF_VALUES:
        return "disabled"
    if any(name in os.environ.get("LD_PRELOAD", "") for name in ("malloc", "jemalloc")):
        return "preloaded"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "not glibc"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = all(libc.mallopt(param, value) == 1 for param, value in SETTINGS)
    except (OSError, AttributeError):
        return "failed"
    return "tuned" if ok else "failed"
