"""Dropout on CPU: lumenlm's mask (`lumenlm.model.dropout`) against torch's `F.dropout`.

Two tables, each with both sides interleaved in one process after warm-up:
- "alone": `dropout` vs `F.dropout` forward and backward on the tensors a training step
  drops, at the suite's batch for each preset: the embedding/residual stream
  (batch, T, d_model) and the attention probabilities (batch, heads, T, T);
- "training step": the trainer's step (chunked loss, clip 1.0, fused AdamW) of each
  preset with the preset's own dropout, once with lumenlm's dropout (the explicit
  attention path, `dropout` on the probabilities) and once as before (`F.dropout`,
  SDPA with `dropout_p`, which on CPU falls back to the same math and torch's mask).
  Same weights and batches; the losses differ only through the masks.

Also checks that the kept fraction is 1 - p to within 5 standard errors. `--sizes`
instead times both, forward and backward, on flat tensors of 2^10..2^20 elements with
lumenlm's mask forced at every size (`MIN_ELEMENTS` set to 0): where it starts to pay.

    .venv/bin/python benchmarks/bench_dropout.py [--presets librarian-1.3m lumiere-1m] [--repeats 7]
    .venv/bin/python benchmarks/bench_dropout.py --sizes
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

import lumenlm.model.blocks as blocks
import lumenlm.model.dropout as dmod
from lumenlm.presets import get_preset
from shapes import suite_shape


@contextmanager
def torch_dropout(on: bool) -> Any:
    """While `on`, lumenlm's model drops as it did before `lumenlm.model.dropout`."""
    saved = (dmod.fast_path, blocks.fast_path)
    if on:
        dmod.fast_path = blocks.fast_path = lambda *a: False
    try:
        yield
    finally:
        dmod.fast_path, blocks.fast_path = saved


def _ms(fn: Callable[[], Any], calls: int) -> float:
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t) / calls * 1e3


def _fwd_bwd(fn: Callable[..., torch.Tensor], x: torch.Tensor, p: float, g: torch.Tensor) -> None:
    fn(x, p, True).backward(g)


def _step(m: Any, opt: Any, x: torch.Tensor, y: torch.Tensor, torch_side: bool) -> None:
    with torch_dropout(torch_side):
        m(x, y, return_logits=False).loss.backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def alone(presets: list[str], repeats: int) -> None:
    print("| preset | tensor | elements | p | F.dropout ms | lumenlm ms | speed-up | kept |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name in presets:
        cfg = get_preset(name).model
        shape = suite_shape(name, cfg.context_length)
        B, T = shape.batch, shape.context
        for what, dims, p in (
            ("residual stream", (B, T, cfg.d_model), cfg.resid_dropout),
            ("attention probabilities", (B, cfg.n_heads, T, T), cfg.attn_dropout),
        ):
            x = torch.randn(dims, requires_grad=True)
            g = torch.randn(dims)
            fns = {"ref": partial(_fwd_bwd, F.dropout, x, p, g),
                   "ours": partial(_fwd_bwd, dmod.dropout, x, p, g)}  # fmt: skip
            times: dict[str, list[float]] = {"ref": [], "ours": []}
            for _ in range(repeats + 1):  # the first round warms up
                for side, fn in fns.items():
                    times[side].append(_ms(fn, 5))
            times = {k: v[1:] for k, v in times.items()}
            r, o = statistics.median(times["ref"]), statistics.median(times["ours"])
            n = x.numel()
            kept = dmod.keep_mask(dims, p).float().mean().item()
            se = ((1 - p) * p / n) ** 0.5
            assert abs(kept - (1 - p)) < 5 * se, (kept, 1 - p, se)
            print(
                f"| {name} | {what} | {n:,} | {p} | {r:.2f} | {o:.2f} | {r / o:.2f}x | {kept:.4f} |"
            )


def sizes(repeats: int) -> None:
    print(f"MIN_ELEMENTS = {dmod.MIN_ELEMENTS:,}")
    print("| elements | F.dropout us | lumenlm us | speed-up |")
    print("|---:|---:|---:|---:|")
    saved, dmod.MIN_ELEMENTS = dmod.MIN_ELEMENTS, 0
    try:
        for e in range(10, 21, 2):
            x = torch.randn(1 << e, requires_grad=True)
            g = torch.randn(1 << e)
            fns = {"ref": partial(_fwd_bwd, F.dropout, x, 0.1, g),
                   "ours": partial(_fwd_bwd, dmod.dropout, x, 0.1, g)}  # fmt: skip
            times: dict[str, list[float]] = {"ref": [], "ours": []}
            for _ in range(repeats + 1):
                for side, fn in fns.items():
                    times[side].append(_ms(fn, 20) * 1e3)
            r, o = (statistics.median(v[1:]) for v in times.values())
            print(f"| 2^{e} | {r:.0f} | {o:.0f} | {r / o:.2f}x |")
    finally:
        dmod.MIN_ELEMENTS = saved


def steps(presets: list[str], repeats: int) -> None:
    from lumenlm.model import GPT
    from lumenlm.train.optim import build_optimizer

    print("\n| preset | batch x T | dropout | F.dropout ms/step | lumenlm ms/step | speed-up |")
    print("|---|---|---:|---:|---:|---:|")
    for name in presets:
        preset = get_preset(name)
        shape = suite_shape(name, preset.model.context_length)
        torch.manual_seed(0)
        base = GPT(preset.model)
        gen = torch.Generator().manual_seed(1)
        V = preset.model.vocab_size
        x = torch.randint(0, V, (shape.batch, shape.context), generator=gen)
        y = torch.randint(0, V, (shape.batch, shape.context), generator=gen)
        sides = {}
        for side in ("ref", "ours"):
            m = copy.deepcopy(base).train()
            sides[side] = (m, build_optimizer(m, preset.train, torch.device("cpu")))

        times: dict[str, list[float]] = {"ref": [], "ours": []}
        for _ in range(repeats + 1):  # the first round warms up
            for side, (m, opt) in sides.items():
                times[side].append(_ms(partial(_step, m, opt, x, y, side == "ref"), 3))
        times = {k: v[1:] for k, v in times.items()}
        r, o = statistics.median(times["ref"]), statistics.median(times["ours"])
        p = preset.model.resid_dropout
        print(
            f"| {name} | {shape.batch} x {shape.context} | {p} | {r:.1f} | {o:.1f} | {r / o:.2f}x |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", nargs="+", default=["librarian-1.3m", "lumiere-1m"])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--sizes", action="store_true", help="the size sweep only")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.sizes:
        sizes(args.repeats)
        return
    alone(args.presets, args.repeats)
    steps(args.presets, args.repeats)


if __name__ == "__main__":
    main()
