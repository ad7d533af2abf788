"""What checking a checkpoint's sha256 costs `lumenlm.load` on a lumenbase-128m model dir.

`load()` verifies the files it reads (config.json, model.safetensors, tokenizer.json)
against `manifest.json` when the directory has one, as every training checkpoint does.
This builds a lumenbase-128m model dir (`GPT(get_preset("lumenbase-128m").model)` +
`modelio.save_model`, fp32 safetensors of about 514 MB), seals it with
`modelio.write_manifest` (the checkpoints' manifest), warms the page cache with one load
of each kind, then times `load(dir)` and `load(dir, verify=False)` in interleaved
repeats (the order alternates, so a slow spell hits both), and `verify_manifest` alone.
Prints the CPU (/proc/cpuinfo), medians, minimums and the overhead.

    .venv/bin/python benchmarks/bench_load_verify.py [--repeats 5] [--dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lumenlm.model import GPT
from lumenlm.modelio import (
    MODEL_FILES,
    WEIGHTS_NAME,
    load,
    save_model,
    verify_manifest,
    write_manifest,
)
from lumenlm.presets import get_preset


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (else platform.processor()), the cores visible, and
    whether it has the SHA extensions (sha_ni) hashlib's sha256 uses."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    name = next(
        (ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")),
        platform.processor() or "unknown CPU",
    )
    sha = "sha_ni" if " sha_ni" in info else "no sha_ni"
    return f"{name} ({os.cpu_count()} cores visible, {sha})"


def build(directory: Path) -> Path:
    """A sealed lumenbase-128m model dir (random weights: hashing does not care)."""
    torch.manual_seed(0)
    model = GPT(get_preset("lumenbase-128m").model)
    save_model(model, directory)
    write_manifest(directory, {"step": 0})
    return directory


def seconds(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed loads of each kind")
    ap.add_argument("--dir", type=Path, help="where to build the model dir (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the model dir afterwards")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    root = args.dir or Path(tempfile.mkdtemp(prefix="bench_load_verify."))
    mdir = root / "lumenbase-128m"
    try:
        t_build = seconds(lambda: build(mdir))
        size = (mdir / WEIGHTS_NAME).stat().st_size
        print(f"cpu: {cpu_name()}")
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads; python {platform.python_version()}"
        )
        print(f"model dir: {mdir} ({size / 1e6:.1f} MB weights, built in {t_build:.1f} s)")
        load(mdir)  # warm-up: page cache, allocator, lazy imports
        load(mdir, verify=False)
        times: dict[str, list[float]] = {"verify": [], "no-verify": [], "hash only": []}
        for i in range(args.repeats):
            order = [True, False] if i % 2 == 0 else [False, True]
            for verify in order:
                times["verify" if verify else "no-verify"].append(
                    seconds(lambda v=verify: load(mdir, verify=v))
                )
            times["hash only"].append(seconds(lambda: verify_manifest(mdir, names=MODEL_FILES)))
        print(f"{'load':12} {'median s':>9} {'min s':>7}   all (s)")
        for name, ts in times.items():
            runs = ", ".join(f"{t:.3f}" for t in ts)
            print(f"{name:12} {statistics.median(ts):9.3f} {min(ts):7.3f}   {runs}")
        med_v, med_n = statistics.median(times["verify"]), statistics.median(times["no-verify"])
        pairs = [v - n for v, n in zip(times["verify"], times["no-verify"])]
        hash_med = statistics.median(times["hash only"])
        print(
            f"verify - no-verify: medians {med_v - med_n:+.3f} s ({med_v / med_n:.2f}x), "
            f"paired median {statistics.median(pairs):+.3f} s; the check itself (sha256 of "
            f"the files load reads) {hash_med:.3f} s = {size / hash_med / 1e9:.2f} GB/s, "
            f"{hash_med / med_n:.0%} of a median unverified load"
        )
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
