"""The packed decode kernel (`lumenlm.packed`) against torch's MKL and numpy's OpenBLAS.

Two measurements:

1. the products of one decode step of a model (default lumenbase-128m: 476 MB of
   weights, which stream from memory as they do in decoding) at 1, 2, 4, 8 and 16 rows,
   in blocks: per side one warm-up pass, then `--calls` timed passes, side after side
   (numpy's under `blas.numpy_threads`, as the step runs it), the whole cycle `--rounds`
   times; the median of each side's passes, in ms, and its time over the packed
   kernel's. (Blocks, not call-by-call alternation: each library's idle threads spin
   for a while after a call and slow the next library's call down.)
2. `--generate`: whole greedy `generate` calls (prompt 16, 32 new tokens, EOS ignored)
   with `LUMENLM_BLAS=torch`, `numpy` and `packed`, each in a process of its own,
   alternating, `--rounds` rounds, at batch 1 and 8: tokens/s, median over rounds.

Like every `lumenlm` process, the script runs with `lumenlm.mkl_shim` where it applies
(it re-runs itself once, before importing torch; its workers inherit that);
`--system-mkl` leaves MKL alone.

    .venv/bin/python benchmarks/bench_packed.py [--preset lumenbase-128m] [--rounds 3]
        [--calls 3] [--generate] [--system-mkl]
"""

# ruff: noqa: E402 (the MKL shim is set up before torch is imported)
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time

from lumenlm import mkl_shim

SHIM = mkl_shim.setup(enabled="--system-mkl" not in sys.argv)

import torch

from lumenlm import blas, packed
from lumenlm.devices import cpu_info
from lumenlm.model import GPT
from lumenlm.model.decode_step import probe_matrices
from lumenlm.presets import get_preset

ROWS = (1, 2, 4, 8, 16)
NEW_TOKENS = 32


def _model(preset: str) -> GPT:
    torch.manual_seed(0)
    return GPT(get_preset(preset).model.with_dropout(0.0)).eval()


def products(preset: str, rounds: int, calls: int) -> None:
    model = _model(preset)
    mats = list(probe_matrices(model))
    packs = [packed.pack(w) for w in mats]
    mb = sum(w.numel() * 4 for w in mats) / 2**20
    del model
    sides = {
        "torch": (torch.mm, mats),
        "numpy": (blas.numpy_mm, mats),
        "packed": (packed.packed_mm, packs),
    }
    blas.set_threads(torch.get_num_threads())
    print(f"{preset}: one decode step's products, {len(mats)} matrices, {mb:.0f} MiB")
    print()
    print("| rows | torch ms | numpy ms | packed ms | torch / packed | numpy / packed |")
    print("|---:|---:|---:|---:|---:|---:|")
    for rows in ROWS:
        x = {k: torch.randn(rows, k) for k in {w.shape[0] for w in mats}}
        times: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(rounds):
            for name, (fn, ws) in sides.items():
                ctx = blas.numpy_threads() if name == "numpy" else contextlib.nullcontext()
                with ctx:
                    for i in range(calls + 1):
                        start = time.perf_counter()
                        for w in ws:
                            fn(x[w.shape[0]], w)
                        if i:  # the first pass of a block is its warm-up
                            times[name].append(time.perf_counter() - start)
        t = {name: statistics.median(v) * 1e3 for name, v in times.items()}
        print(
            f"| {rows} | {t['torch']:.3g} | {t['numpy']:.3g} | {t['packed']:.3g} "
            f"| {t['torch'] / t['packed']:.2f}x | {t['numpy'] / t['packed']:.2f}x |"
        )


def generate_worker(preset: str, rows: int) -> None:
    """(In a fresh process, `LUMENLM_BLAS` set) the median tokens/s of 3 greedy calls."""
    from lumenlm.infer import generate

    model = _model(preset)
    g = torch.Generator().manual_seed(rows)
    prompts = torch.randint(0, model.config.vocab_size, (rows, 16), generator=g).tolist()
    kw = dict(temperature=0, max_new_tokens=NEW_TOKENS, ignore_eos=True)
    generate(model, prompts, **kw)  # warm-up (and the probe, where one runs)
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        generate(model, prompts, **kw)
        rates.append(rows * NEW_TOKENS / (time.perf_counter() - start))
    print(statistics.median(rates))


def whole_calls(preset: str, rounds: int) -> None:
    names = ("torch", "numpy", "packed")
    print()
    print(f"{preset}: whole generate calls (16 + {NEW_TOKENS} tokens), tokens/s")
    print()
    print("| rows | torch | numpy | packed | packed / torch | packed / numpy |")
    print("|---:|---:|---:|---:|---:|---:|")
    for rows in (1, 8):
        rates: dict[str, list[float]] = {n: [] for n in names}
        for _ in range(rounds):
            for name in names:
                env = {**os.environ, blas.ENV: name}
                cmd = [sys.executable, __file__, "--worker", preset, str(rows)]
                if "--system-mkl" in sys.argv:
                    cmd.append("--system-mkl")
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                rates[name].append(float(out.stdout.split()[-1]))
        r = {n: statistics.median(v) for n, v in rates.items()}
        print(
            f"| {rows} | {r['torch']:.1f} | {r['numpy']:.1f} | {r['packed']:.1f} "
            f"| {r['packed'] / r['torch']:.2f}x | {r['packed'] / r['numpy']:.2f}x |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", default="lumenbase-128m")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--generate", action="store_true", help="also whole generate calls")
    ap.add_argument("--system-mkl", action="store_true", help="run without the MKL shim")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        generate_worker(args.worker[0], int(args.worker[1]))
        return
    why = packed.unavailable()
    if why is not None:
        sys.exit(f"bench_packed: the packed kernel is unavailable here: {why}")
    name, flags = cpu_info()
    print(
        f"CPU: {name}; avx2 {'avx2' in flags}, avx512f {'avx512f' in flags}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; MKL: {SHIM}"
    )
    print()
    products(args.preset, args.rounds, args.calls)
    if args.generate:
        whole_calls(args.preset, args.rounds)


if __name__ == "__main__":
    main()
