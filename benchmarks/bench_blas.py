"""torch's BLAS (MKL in the x86 wheels) against numpy's (OpenBLAS), on this CPU.

Three measurements, each interleaved (torch, numpy, torch, ...), medians of the rounds:

1. the bare products (`torch.mm` vs `lumenlm.blas.numpy_mm`) at the shapes of decoding
   (1 and 8 rows) and of a training step (4096 rows) of the seed presets, in GFLOP/s;
2. the fast decode step (`model.decode_step.DecodeStep`), per token, with either BLAS
   (numpy under `blas.numpy_threads`, as the step runs it), at batch 1 and 8, for the
   presets and two mid-sized Llama models, the evidence for `blas.STREAM_BYTES`;
3. `--generate`: whole greedy `generate` calls (prompt 16, 32 new tokens), each BLAS in
   processes of its own, alternating (`LUMENLM_BLAS=numpy` forces numpy at every model
   size, `LUMENLM_BLAS=torch` never), at batch 1 and 8: the end-to-end figure that the
   threshold follows;
4. `--probe`: what four kinds of probe choose, each run `--rounds` times: the probe as it
   was (4 MB weights that stay in the cache, torch's and numpy's products alternating
   call by call), the same weights timed in blocks as `blas.probe` does now, random
   streamed weights, and lumenbase-128m's own (the probe now); alone, without the rest;
5. `--train`: a training step (forward, chunked loss, backward, fused AdamW) with every
   `nn.Linear` product (forward and both backward products) through numpy, against the
   model as it is; both under `numpy_threads` and without. This is the trial behind
   "training keeps torch's BLAS" in `lumenlm.blas`.

    .venv/bin/python benchmarks/bench_blas.py [--rounds 5] [--generate] [--probe] [--train]
        [--threads N] [--system-mkl]

Like every `lumenlm` process, the script runs with `lumenlm.mkl_shim` where it applies
(it re-runs itself once, before importing torch); `--system-mkl` leaves MKL alone.
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
from collections.abc import Callable
from typing import Any

from lumenlm import mkl_shim

# before torch is imported: as the `lumenlm` CLI does (re-runs this script once)
SHIM = mkl_shim.setup(enabled="--system-mkl" not in sys.argv)

import torch
from torch import Tensor, nn

from lumenlm import blas
from lumenlm.devices import cpu_info
from lumenlm.model import GPT
from lumenlm.model.decode_step import DecodeStep, decode_weights, probe_matrices
from lumenlm.presets import get_preset
from shapes import suite_shape
from timing import samples

PRODUCTS = {
    "librarian head (decode)": (8000, 128),
    "lumenbase head (decode)": (32000, 768),
    "lumenbase qkv (decode)": (1280, 768),
    "lumenbase down (decode)": (768, 3072),
}
"""name -> (out, in) of a weight; decoding multiplies 1 or 8 rows by its (in, out) view."""
TRAIN_PRODUCTS = {
    "librarian head fwd": (4096, 128, 8000),
    "librarian mlp fwd": (4096, 128, 256),
    "lumenbase mlp up fwd": (256, 768, 3072),
    "lumenbase head fwd": (256, 768, 32000),
}
"""name -> (rows, in, out) of a training-step product."""
DECODE_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "librarian-1.3m": ("librarian-1.3m", {}),
    "lumiere-1m": ("lumiere-1m", {}),
    "llama d384 x6": (
        "lumenbase-128m",
        dict(
            d_model=384,
            n_layers=6,
            n_heads=6,
            n_kv_heads=6,
            d_ff=1536,
            vocab_size=8000,
            context_length=256,
        ),
    ),
    "llama d512 x8": (
        "lumenbase-128m",
        dict(
            d_model=512,
            n_layers=8,
            n_heads=8,
            n_kv_heads=8,
            d_ff=2048,
            vocab_size=8000,
            context_length=256,
        ),
    ),
    "lumenbase-128m": ("lumenbase-128m", {}),
}


def interleaved(
    fns: dict[str, Callable[[], Any]], rounds: int, min_s: float = 0.05
) -> dict[str, float]:
    """Median seconds per call of each function over `rounds` interleaved rounds: after
    two warm-up calls each, every round takes one `timing.samples` sample of each (calls
    repeated until `min_s` has run)."""
    times: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            warmup = 2 if not times[name] else 0
            times[name] += samples(fn, "cpu", warmup=warmup, iters=1, min_s=min_s)[0]
    return {n: statistics.median(t) for n, t in times.items()}


def products(rounds: int) -> None:
    print("| product | rows | torch GFLOP/s | numpy GFLOP/s | numpy / torch |")
    print("|---|---:|---:|---:|---:|")
    g = torch.Generator().manual_seed(0)
    cases = [(n, r, k, o) for n, (o, k) in PRODUCTS.items() for r in (1, 8)]
    cases += [(n, r, k, o) for n, (r, k, o) in TRAIN_PRODUCTS.items()]
    for name, rows, k, out in cases:
        a = torch.randn(rows, k, generator=g)
        w = torch.randn(out, k, generator=g).t()  # an nn.Linear weight, (in, out) view
        blas.set_threads(torch.get_num_threads())
        fns = {
            "torch": lambda a=a, w=w: torch.mm(a, w),
            "numpy": lambda a=a, w=w: blas.numpy_mm(a, w),
        }
        t = interleaved(fns, rounds)
        flop = 2 * rows * k * out
        print(
            f"| {name} | {rows} | {flop / t['torch'] / 1e9:.1f} | {flop / t['numpy'] / 1e9:.1f} "
            f"| {t['torch'] / t['numpy']:.2f}x |"
        )


def _step_fn(model: GPT, rows: int, mm: Callable[[Tensor, Tensor], Tensor]) -> Callable[[], Any]:
    step = DecodeStep(model)
    step._mm = mm  # what decode_mm would pick, forced, on the (in, out) copies
    step._split_threads = mm is blas.numpy_mm  # numpy's runs under numpy_threads
    step.weights = decode_weights(model, pack=False)
    cfg = model.config
    S = cfg.context_length
    cache = model.new_cache(rows, S)
    tokens = torch.arange(rows) % cfg.vocab_size
    col = torch.tensor([S // 2])
    pos = col.expand(rows)
    mask = torch.full((rows, S), float("-inf"))
    mask[:, : S // 2 + 1] = 0.0
    mask4 = mask[:, None, None]

    def run() -> Tensor:
        with torch.inference_mode():
            return step(tokens, pos, col, mask4, cache.k, cache.v)

    return run


def decode_steps(rounds: int) -> None:
    print("| model | MB (fp32) | rows | torch ms/token | numpy ms/token | numpy / torch speed |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (preset, overrides) in DECODE_MODELS.items():
        torch.manual_seed(0)
        model = GPT(get_preset(preset).model.with_dropout(0.0).replace(**overrides)).eval()
        mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
        for rows in (1, 8):
            t = interleaved(
                {
                    "torch": _step_fn(model, rows, torch.mm),
                    "numpy": _step_fn(model, rows, blas.numpy_mm),
                },
                rounds,
                0.2,
            )
            print(
                f"| {name} | {mb:.0f} | {rows} | {t['torch'] * 1e3:.2f} | {t['numpy'] * 1e3:.2f} "
                f"| {t['torch'] / t['numpy']:.2f}x |"
            )


class _NumpyLinear(torch.autograd.Function):
    """y = x W^T + b with all three products through numpy (the trial of --train)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:  # type: ignore[override]
        x2 = x.reshape(-1, x.shape[-1])
        y = blas.numpy_mm(x2, w.t())
        if b is not None:
            y += b
        ctx.save_for_backward(x2, w)
        ctx.shape, ctx.bias = x.shape, b is not None
        return y.view(*x.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x2, w = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        dx = blas.numpy_mm(g, w).view(ctx.shape)
        dw = blas.numpy_mm(g.t(), x2)
        return dx, dw, (g.sum(0) if ctx.bias else None)


def _train_fn(
    preset: str, rows: int, through_numpy: bool, split_threads: bool
) -> Callable[[], Any]:
    cfg = get_preset(preset).model.with_dropout(0.0)
    torch.manual_seed(0)
    model = GPT(cfg)
    if through_numpy:
        for mod in model.modules():
            if isinstance(mod, nn.Linear) and mod is not model.lm_head:
                mod.forward = lambda x, m=mod: _NumpyLinear.apply(x, m.weight, m.bias)  # type: ignore[method-assign]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    T = suite_shape(preset, cfg.context_length).context  # the suite's context
    x = torch.randint(0, cfg.vocab_size, (rows, T))
    y = torch.randint(0, cfg.vocab_size, (rows, T))
    ctx = blas.numpy_threads if split_threads else contextlib.nullcontext

    def run() -> float:
        with ctx():
            loss = model(x, targets=y, return_logits=False).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return loss.item()

    return run


def train_trial(rounds: int) -> None:
    print(
        "| preset | tokens/s torch BLAS | numpy Linear | numpy Linear, split threads | best numpy / torch |"
    )
    print("|---|---:|---:|---:|---:|")
    for preset, rows in (("librarian-1.3m", 32), ("lumiere-1m", 32), ("lumenbase-128m", 1)):
        fns = {
            "torch": _train_fn(preset, rows, False, False),
            "numpy": _train_fn(preset, rows, True, False),
            "split": _train_fn(preset, rows, True, True),
        }
        t = interleaved(fns, rounds, 0.5)
        cfg = get_preset(preset).model
        tokens = rows * suite_shape(preset, cfg.context_length).context
        best = min(t["numpy"], t["split"])
        print(
            f"| {preset} | {tokens / t['torch']:.0f} | {tokens / t['numpy']:.0f} | "
            f"{tokens / t['split']:.0f} | {t['torch'] / best:.2f}x |"
        )


GENERATE_NEW = 32


def generate_worker(preset: str, rows: int, calls: int) -> None:
    """(In a fresh process) print the median tokens/s of `calls` greedy generate calls."""
    from lumenlm.infer import generate

    cfg = get_preset(preset).model.with_dropout(0.0)
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    g = torch.Generator().manual_seed(rows)
    prompts = torch.randint(0, cfg.vocab_size, (rows, 16), generator=g).tolist()
    kw: dict[str, Any] = dict(temperature=0, max_new_tokens=GENERATE_NEW, ignore_eos=True)
    times, _ = samples(lambda: generate(model, prompts, **kw), "cpu", warmup=2, iters=calls)
    print(rows * GENERATE_NEW / statistics.median(times))


def whole_calls(rounds: int, threads: int) -> None:
    print(
        "| preset | rows | generate tok/s, torch's BLAS | numpy's BLAS (forced) | numpy / torch |"
    )
    print("|---|---:|---:|---:|---:|")
    for preset in ("librarian-1.3m", "lumiere-1m", "lumenbase-128m"):
        calls = 3 if preset == "lumenbase-128m" else 9
        for rows in (1, 8):
            tps: dict[str, list[float]] = {"torch": [], "numpy": []}
            for _ in range(max(1, rounds // 2)):
                for which in tps:
                    env = {**os.environ, "LUMENLM_BLAS": which}
                    cmd = [sys.executable, __file__, "--generate-worker", preset, str(rows),
                           str(calls), "--threads", str(threads)]  # fmt: skip
                    if "--system-mkl" in sys.argv:
                        cmd.append("--system-mkl")
                    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                    tps[which].append(float(out.stdout.split()[-1]))
            t, n = statistics.median(tps["torch"]), statistics.median(tps["numpy"])
            print(f"| {preset} | {rows} | {t:.0f} | {n:.0f} | {n / t:.2f}x |")


CACHED_WEIGHTS = [torch.randn(512, 2048), torch.randn(2048, 512)]
"""The probe's weights before: 4 MB each, small enough to stay in a 32 MB L3."""


def _alternating_probe(weights: list[Tensor], rounds: int = 7) -> tuple[str, float]:
    """The probe as it was before: torch's and numpy's products alternating call by
    call (4 products of 1 and 8 rows per call), each side's best of `rounds`."""
    blas.set_threads(torch.get_num_threads())
    xs = {(r, w.shape[0]): torch.randn(r, w.shape[0]) for r in (1, 8) for w in weights}

    def once(fn: Callable[[Tensor, Tensor], Tensor]) -> float:
        start = time.perf_counter()
        for r in (1, 8):
            for w in weights:
                for _ in range(4):
                    fn(xs[r, w.shape[0]], w)
        return time.perf_counter() - start

    once(torch.mm), once(blas.numpy_mm)
    t = {"torch": [], "numpy": []}
    for _ in range(rounds):
        t["torch"].append(once(torch.mm))
        t["numpy"].append(once(blas.numpy_mm))
    ratio = min(t["torch"]) / min(t["numpy"])
    return ("numpy" if ratio >= blas.MARGIN else "torch"), ratio


def probe_trial(rounds: int) -> None:
    """Each kind of probe `rounds` times, interleaved: what it chose, and torch's time
    over the chosen (or best other) side's."""
    model = GPT(get_preset("lumenbase-128m").model.with_dropout(0.0)).eval()
    kinds: dict[str, Callable[[], tuple[str, float]]] = {
        "4 MB weights, in the cache; torch and numpy alternating call by call (the probe "
        "before)": lambda: _alternating_probe(CACHED_WEIGHTS),
        "4 MB weights, in the cache; in blocks": lambda: blas.probe(weights=CACHED_WEIGHTS),
        f"random weights, {blas.probe_bytes() >> 20} MiB, streamed; in blocks": blas.probe,
        "lumenbase-128m's own first matrices, streamed; in blocks (the probe now)": (
            lambda: blas.probe(weights=probe_matrices(model))
        ),
    }
    got: dict[str, list[tuple[str, float]]] = {k: [] for k in kinds}
    for _ in range(rounds):
        for name, fn in kinds.items():
            got[name].append(fn())
    print("| probe | choice (torch's time / the other's), each probe |")
    print("|---|---|")
    for name, results in got.items():
        print(f"| {name} | {', '.join(f'{c} {r:.2f}' for c, r in results)} |")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--train", action="store_true", help="also the training-step trial")
    ap.add_argument("--generate", action="store_true", help="also whole generate calls")
    ap.add_argument("--probe", action="store_true", help="only the trial of four probes")
    ap.add_argument("--system-mkl", action="store_true", help="run without the MKL shim")
    ap.add_argument("--generate-worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.generate_worker:
        preset, rows, calls = args.generate_worker
        generate_worker(preset, int(rows), int(calls))
        return
    model, flags = cpu_info()
    print(
        f"CPU: {model}; avx2 {'avx2' in flags}, avx512f {'avx512f' in flags}; "
        f"torch {torch.__version__} threads {torch.get_num_threads()}; MKL: {SHIM}"
    )
    if args.probe:  # the probe trial alone
        probe_trial(args.rounds)
        return
    products(args.rounds)
    print()
    decode_steps(args.rounds)
    if args.generate:
        print()
        whole_calls(args.rounds, torch.get_num_threads())
    if args.train:
        print()
        train_trial(max(3, args.rounds // 2))


if __name__ == "__main__":
    main()
