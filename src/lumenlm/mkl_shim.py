"""MKL's own fast kernels on AMD CPUs: a one-function shim, preloaded on a re-exec.

Why: torch's x86 wheels multiply fp32 matrices with Intel MKL, and MKL asks whether the
CPU is an Intel one (`mkl_serv_intel_cpu_true`) before it picks a kernel. On an AMD CPU
the answer is no and MKL runs slower generic code, however capable the CPU: on a 2-core
AMD EPYC (Zen 3, AVX2 and FMA) the librarian-1.3m head's forward product ran at 75
GFLOP/s instead of 131, and a 2048^3 product at 99 instead of 129
(`benchmarks/bench_mkl.py`). The shim is the well-known community workaround (as in
"libfakeintel"): one C function, `int mkl_serv_intel_cpu_true(void) { return 1; }`,
preloaded so that MKL's call resolves to it; MKL then chooses among its kernels by the
instruction sets the CPU reports, as it does on an Intel CPU with the same ones. The
products are the same fp32 GEMM; only the kernels' blocking and summation order differ,
so results agree to rounding (tests/test_mkl_shim.py checks products against fp64 and a
model's logits and gradients against the unshimmed process).

`setup()`, called by the CLI after parsing and before torch is imported, does this on
Linux x86-64 with an AMD CPU that has AVX2 and FMA: it compiles the shim once with the
system C compiler (`cc`, or `$CC`) into the user cache, then re-executes the same command
with the shim in `LD_PRELOAD` (the dynamic loader reads it only at process start). That
costs one more interpreter start, about 0.05 s. Nothing happens elsewhere, without a C
compiler, when a shim is preloaded already, or with `LUMENLM_MKL=system` (or
`--system-mkl`). Anything else in `LD_PRELOAD` (tcmalloc, say) stays, after the shim.
Processes started by the command inherit the setting.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from lumenlm import cbuild, cpuinfo

ENV = "LUMENLM_MKL"
"""`system` (or off/0/no) leaves MKL alone; anything else lets `setup` shim it."""
ACTIVE_ENV = "LUMENLM_MKL_SHIM"
"""Set in the re-executed process to the shim's path (also stops a second re-exec)."""
OFF_VALUES = {"system", "default", "off", "0", "no"}
SOURCE = "int mkl_serv_intel_cpu_true(void) { return 1; }\n"
"""The whole shim: MKL's "is this an Intel CPU?" answered yes."""
REQUIRED_FLAGS = ("avx2", "fma")
"""CPU flags the shim requires: MKL's AVX2 kernels, the ones it then picks on Zen 2-3."""


def cpu_vendor_flags() -> tuple[str, frozenset[str]]:
    """(vendor_id, flags) of this CPU (`lumenlm.cpuinfo`, which imports no torch)."""
    info = cpuinfo.read()
    return info.vendor, info.flags


def applies(environ: dict[str, str] | None = None) -> str | None:
    """None when this process should get the shim, else why not (a short phrase)."""
    env = os.environ if environ is None else environ
    if env.get(ENV, "").strip().lower() in OFF_VALUES:
        return f"disabled ({ENV}=system)"
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return "not Linux x86-64"
    vendor, flags = cpu_vendor_flags()
    if vendor != "AuthenticAMD":
        return f"not an AMD CPU ({vendor or 'unknown vendor'})"
    if not all(f in flags for f in REQUIRED_FLAGS):
        return "the CPU lacks AVX2/FMA"
    if "mkl_serv_intel_cpu" in env.get("LD_PRELOAD", "") or "fakeintel" in env.get(
        "LD_PRELOAD", ""
    ):
        return "a shim is already preloaded"
    return None


def build(directory: Path | None = None) -> Path | None:
    """The shim's shared library, compiled once (`lumenlm.cbuild`: atomically, named by
    the source's hash); None when no C compiler works or the folder is not writable."""
    return cbuild.library("mkl_intel_path", SOURCE, ("-O2",), directory)


def active() -> str | None:
    """The shim's path when this process runs with it (after `setup`'s re-exec)."""
    path = os.environ.get(ACTIVE_ENV)
    return path if path and path in os.environ.get("LD_PRELOAD", "") else None


def _loaded() -> bool:
    """Whether the shim's function is in the process's global symbols: true when the
    loader preloaded it (before torch is imported nothing else defines it)."""
    import ctypes

    try:
        return hasattr(ctypes.CDLL(None), "mkl_serv_intel_cpu_true")
    except OSError:
        return False


def preload_env(lib: Path, environ: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of the environment that preloads `lib` (ahead of anything already in
    LD_PRELOAD, an allocator for instance) and marks the shim active."""
    env = dict(os.environ if environ is None else environ)
    env["LD_PRELOAD"] = " ".join(filter(None, [str(lib), env.get("LD_PRELOAD", "").strip()]))
    env[ACTIVE_ENV] = str(lib)
    return env


def unpreload_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of the environment without the shim `preload_env` added (anything else in
    LD_PRELOAD stays): for a child process that must run with MKL's own choice."""
    env = dict(os.environ if environ is None else environ)
    shim = env.pop(ACTIVE_ENV, None)
    if shim:
        rest = [p for p in env.get("LD_PRELOAD", "").split() if p != shim]
        if rest:
            env["LD_PRELOAD"] = " ".join(rest)
        else:
            env.pop("LD_PRELOAD", None)
    return env


def setup(enabled: bool = True, argv: list[str] | None = None) -> str:
    """Re-execute this process with the shim preloaded where it `applies` (never
    returns then); else return what was done: "active" (this process has it), or why
    not. `argv`: the command line to run again (default `sys.orig_argv`). Never raises:
    a slower process is better than none."""
    if active():
        return "active" if _loaded() else "preload failed (the loader ignored the shim)"
    if not enabled:
        return "disabled (--system-mkl)"
    why = applies()
    if why is not None:
        return why
    if ACTIVE_ENV in os.environ:  # we re-executed and the shim still is not there
        return "preload failed"
    lib = build()
    if lib is None:
        return "no C compiler (or cache folder not writable)"
    args = list(argv if argv is not None else sys.orig_argv)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *args[1:]], preload_env(lib))
    except OSError:
        return "re-exec failed"
    return "re-exec failed"  # not reached
