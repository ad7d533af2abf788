"""The malloc tuning: freed large blocks stay mapped, so reuse does not page-fault.

Measured in fresh subprocesses (mallopt applies to the whole process, once), by counting
minor page faults (`ru_minflt`), never by time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lumenlm.allocator import tune_malloc

PROBE = """
import ctypes, json, resource
from lumenlm.allocator import tune_malloc
state = tune_malloc()
libc = ctypes.CDLL("libc.so.6")
libc.free.argtypes = [ctypes.c_void_p]
libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t]
def step():  # what torch's CPU allocator does for a 40 MiB tensor: aligned, written, freed
    p = ctypes.c_void_p()
    assert libc.posix_memalign(ctypes.byref(p), 64, 40 << 20) == 0
    ctypes.memset(p, 1, 40 << 20)
    libc.free(p)
for _ in range(16):  # warm-up: aligned blocks leave fragments; the heap settles after a few
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):  # above glibc's largest mmap threshold (32 MiB), as big activations are
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"state": state, "faults": faults}))
"""


def _probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("LUMENLM_MALLOC", "LD_PRELOAD")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux only")
def test_tuned_malloc_stops_refaulting_freed_blocks() -> None:
    tuned, system = _probe(), _probe(LUMENLM_MALLOC="system")
    if tuned["state"] == "not glibc":
        pytest.skip("not a glibc system")
    assert tuned["state"] == "tuned" and system["state"] == "disabled"
    # 10 rounds x 40 MiB = 102,400 pages faulted back in by default; tuned, next to none.
    assert system["faults"] > 10 * 10240 * 0.9
    # Tuned, the heap has settled: at most a round or two of the ten still fault (glibc
    # places aligned blocks around the fragments the warm-up left).
    assert tuned["faults"] < system["faults"] / 4


def test_tune_malloc_answers_once_and_never_raises() -> None:
    first = tune_malloc()
    assert first in {"tuned", "disabled", "preloaded", "not glibc", "failed"}
    assert tune_malloc(enabled=False) == first  # once per process
