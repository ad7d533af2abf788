"""C sources compiled once with the system compiler into the user cache, atomically.

Why a module of its own: two parts of lumenlm compile a few lines of C at run time, the
MKL shim (`lumenlm.mkl_shim`, before torch is imported) and the packed decode kernel
(`lumenlm.packed`). Both want the same things: the library named by a hash of its
source and flags (an edited source never reuses a stale build), written under a
temporary name and renamed (two processes building at once never see half a file),
and None rather than an error when there is no compiler or the cache is not writable
(a slower process is better than none). Imports nothing heavy.
"""

from __future__ import annotations

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
