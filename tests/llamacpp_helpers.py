"""Build llama.cpp from the `llama-cpp-python` source package, once, for the slow GGUF tests.

The registry's sdist vendors a whole llama.cpp tree; we build only its `llama-simple`
(greedy decoding of a prompt) and `llama-tokenize` tools with CMake and the system C++
compiler, and cache the build under ~/.cache/lumenlm/llama.cpp/<version>/ so later runs
reuse it. `llama_cpp_tools()` returns the two binaries or a reason why they could not be
built, which the tests turn into a skip (never a silent pass).

Run `python tests/llamacpp_helpers.py` to build ahead of the tests (it takes a while on
two cores).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

VERSION = "0.3.36"
CACHE = Path(os.environ.get("LUMENLM_LLAMACPP_CACHE", Path.home() / ".cache/lumenlm/llama.cpp"))
TARGETS = ("llama-simple", "llama-tokenize")


def _run(cmd: list[str], log: Path, cwd: Path | None = None) -> None:
    with log.open("a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        subprocess.run(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, check=True)


def _sdist(root: Path, log: Path) -> Path:
    found = sorted(root.glob(f"llama_cpp_python-{VERSION}.tar.gz"))
    if found:
        return found[0]
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"llama-cpp-python=={VERSION}",
            "-d",
            str(root),
        ],
        log,
    )
    return next(root.glob(f"llama_cpp_python-{VERSION}.tar.gz"))


def build(root: Path = CACHE / VERSION) -> dict[str, Path]:
    """Build (or find) the llama.cpp tools; raise on any failure."""
    bin_dir = root / "build" / "bin"
    tools = {t: bin_dir / t for t in TARGETS}
    if all(p.is_file() for p in tools.values()):
        return tools
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        raise RuntimeError("cmake and a C++ compiler are needed (apt-get install cmake g++)")
    root.mkdir(parents=True, exist_ok=True)
    log = root / "build.log"
    src = root / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"
    if not (src / "CMakeLists.txt").is_file():
        with tarfile.open(_sdist(root, log)) as tar:
            tar.extractall(root, filter="data")
    _run(
        [
            "cmake",
            "-S",
            str(src),
            "-B",
            str(root / "build"),
            "-DCMAKE_BUILD_TYPE=Release",
            "-DLLAMA_CURL=OFF",
            "-DLLAMA_OPENSSL=OFF",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_SERVER=OFF",
            "-DGGML_NATIVE=ON",
            "-DBUILD_SHARED_LIBS=OFF",
        ],
        log,
    )
    jobs = str(max(1, (os.cpu_count() or 2)))
    _run(
        ["cmake", "--build", str(root / "build"), "-j", jobs, "--target", *TARGETS],
        log,
    )
    missing = [t for t, p in tools.items() if not p.is_file()]
    if missing:
        raise RuntimeError(f"the build finished without {missing}; see {log}")
    return tools


def llama_cpp_tools() -> tuple[dict[str, Path] | None, str]:
    """(tools, "") when llama.cpp is built or builds now, else (None, why not)."""
    try:
        return build(), ""
    except Exception as exc:  # any failure becomes the skip reason
        return None, f"llama.cpp could not be built from llama-cpp-python {VERSION}: {exc}"


if __name__ == "__main__":
    tools, why = llama_cpp_tools()
    print(tools or why)
    sys.exit(0 if tools else 1)
