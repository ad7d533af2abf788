"""C sources compiled once with the system compiler into the user cache, atomically.

Why a module of its own: four parts of lumenlm compile C at run time, the MKL shim
(`lumenlm.mkl_shim`, before torch is imported), the packed decode kernel
(`lumenlm.packed`), the small-model decode step (`lumenlm.small_step`) and the
cross-entropy rows kernel (`lumenlm.ce_rows`). All want the same things: the library named by a hash of its
source and flags (an edited source never reuses a stale build), written under a
temporary name and renamed (two processes building at once never see half a file),
and None rather than an error when there is no compiler or the cache is not writable
(a slower process is better than none). The three kernels also share how an OpenMP
library is loaded (`load_openmp`). Imports nothing heavy.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path


def cache_dir() -> Path:
    """Where compiled libraries are kept: $XDG_CACHE_HOME/lumenlm, else ~/.cache/lumenlm."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lumenlm"


def turned_off(env: str) -> bool:
    """Whether the environment variable `env` turns a kernel off: 0, off, false or no."""
    return os.environ.get(env, "").strip().lower() in ("0", "off", "false", "no")


def compiler() -> str | None:
    """The C compiler: `$CC`, else `cc`, else `gcc` on PATH; None when there is none."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def library(
    name: str, source: str, flags: Sequence[str] = ("-O2",), directory: Path | None = None
) -> Path | None:
    """`lib<name>-<hash>.so` compiled from `source` with `flags` (plus -shared -fPIC),
    built on first use and reused after; None when no compiler works or the folder is
    not writable."""
    d = directory or cache_dir()
    tag = hashlib.sha256("\0".join([source, *flags]).encode()).hexdigest()[:12]
    lib = d / f"lib{name}-{tag}.so"
    if lib.is_file():
        return lib
    cc = compiler()
    if not cc:
        return None
    try:
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=d) as tmp:
            src, out = Path(tmp) / f"{name}.c", Path(tmp) / f"{name}.so"
            src.write_text(source)
            subprocess.run(
                [cc, "-shared", "-fPIC", *flags, "-o", str(out), str(src)],
                check=True, capture_output=True, timeout=120,
            )  # fmt: skip
            os.replace(out, lib)
    except (OSError, subprocess.SubprocessError):
        return None
    return lib


def openmp_runtimes() -> set[str]:
    """Paths of the OpenMP runtimes mapped into this process (Linux; empty elsewhere)."""
    found = set()
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            for line in f:
                path = line.rsplit(" ", 1)[-1].strip()
                name = path.rsplit("/", 1)[-1]
                if name.startswith(("libgomp", "libiomp", "libomp")):
                    found.add(path)
    except OSError:
        pass
    return found


def load_openmp(path: Path) -> tuple[ctypes.CDLL | None, str]:
    """(the library at `path`, "") or (None, why not), for a library linked against
    libgomp: the dynamic loader resolves that to the copy torch already mapped, so one
    OpenMP pool serves both. Where it maps a second runtime instead (two pools fighting
    over the cores, or a crash), it is refused."""
    before = openmp_runtimes()
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        return None, f"the library did not load ({e})"
    if len(openmp_runtimes() | before) > 1:
        return None, "two OpenMP runtimes in the process (torch's and the library's)"
    return lib, ""


def avx2_openmp_library(
    name: str, source: str, flags: Sequence[str], cpu_flags: frozenset[str] | set[str]
) -> tuple[ctypes.CDLL | None, str]:
    """(the loaded library, "") or (None, why not) for a kernel written for x86-64 Linux
    with AVX2/FMA and OpenMP (`lumenlm.ce_rows`, `lumenlm.packed`, `lumenlm.small_step`): the platform and
    the CPU's flags (`cpu_flags`, from `lumenlm.cpuinfo`) checked, `library` built,
    `load_openmp` loaded."""
    import platform

    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None, "not Linux x86-64"
    if not {"avx2", "fma"} <= set(cpu_flags):
        return None, "the CPU lacks AVX2/FMA"
    path = library(name, source, flags)
    if path is None:
        return None, "no C compiler with OpenMP (or the cache folder is not writable)"
    return load_openmp(path)
