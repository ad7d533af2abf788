"""Evaluation's vocabulary scoring: block sizes within a chunk, and chunk sizes.

Blocks:
`lumenlm.model.chunked_loss.linear_token_scores` (the head of `lumenlm eval`: the
product one chunk of rows at a time, then NLL and target rank) with
`SCORE_BLOCK_ELEMENTS` set to each size, and "whole" (one block per chunk: the code
before blocks). Each preset's head (its vocabulary and width, tied weights of a seeded
model) scores the benchmark suite's rows (`shapes.SUITE_SHAPES`: batch x context) of
random hidden states. The sizes alternate after warm-up (interleaved, so a slow spell
of the shared host hits all); every size must give the same NLL and ranks, bit for bit.
A last row, "default, NLL only", scores the default blocks without the target rank
(the loss alone, as the HF and nanoGPT loops of `python -m benchmarks` compute it): the
difference is what top-1/5/10 accuracy costs. Reports the median and lower-quartile
milliseconds and whole / size (> 1: faster).

Chunks (`--chunks`): the whole `lumenlm.evaluate.evaluate_tokens` of a seeded model of
each preset on random tokens at the suite's batch, with `SCORE_CHUNK_ELEMENTS` at
2^22..2^25 (the default block size), interleaved, with the same check; reports the
median and lower-quartile milliseconds and each size's speed against 2^22.

    .venv/bin/python benchmarks/bench_score_blocks.py [--presets librarian-1.3m lumiere-1m]
    .venv/bin/python benchmarks/bench_score_blocks.py --chunks [--batch 64]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import lumenlm.model.chunked_loss as cl
from lumenlm.presets import get_preset
from shapes import suite_shape

SIZES = {"2^18": 1 << 18, "2^19": 1 << 19, "2^20": 1 << 20, "whole": 1 << 40}
CHUNKS = {f"2^{e}": 1 << e for e in (22, 23, 24, 25)}
NLL_ONLY = "default, NLL only"


def _nll_only(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_scores` without the rank (zeros): what the rank's comparison and row sum
    cost, against the same blocks and products (HF's and nanoGPT's loss-only work)."""
    nll = torch.log_softmax(logits.float(), dim=-1).gather(1, targets[:, None]).squeeze(1)
    return nll.neg_(), torch.zeros_like(targets)


def chunks(presets: list[str], repeats: int, batch: int | None) -> None:
    """The `--chunks` table (see the module docstring)."""
    from lumenlm.evaluate import evaluate_tokens
    from lumenlm.model import GPT

    print(f"default SCORE_CHUNK_ELEMENTS = 2^{cl.SCORE_CHUNK_ELEMENTS.bit_length() - 1}")
    print("| preset | batch x context | chunk | median ms | q25 ms | vs 2^22 (median) |")
    print("|---|---|---|---:|---:|---:|")
    default = cl.SCORE_CHUNK_ELEMENTS
    for name in presets:
        cfg = get_preset(name).model.with_dropout(0.0)
        shape = suite_shape(name, cfg.context_length)
        b = batch or shape.batch
        torch.manual_seed(0)
        model = GPT(cfg).eval()
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, cfg.vocab_size, (b * shape.context + 1,), generator=g)
        ref = None
        times: dict[str, list[float]] = {k: [] for k in CHUNKS}
        try:
            for r in range(repeats + 1):
                for k, size in CHUNKS.items():
                    cl.SCORE_CHUNK_ELEMENTS = size
                    t0 = time.perf_counter()
                    res = evaluate_tokens(
                        model, tokens, window=shape.context, batch_size=b, progress=False
                    )
                    dt = time.perf_counter() - t0
                    got = (res.nll_sum, res.top1, res.top5, res.top10)
                    ref = ref or got
                    assert got == ref, (k, got, ref)
                    if r:
                        times[k].append(dt)
        finally:
            cl.SCORE_CHUNK_ELEMENTS = default
        base = statistics.median(times["2^22"])
        for k, v in times.items():
            med, q25 = statistics.median(v), sorted(v)[len(v) // 4]
            print(f"| {name} | {b} x {shape.context} | {k} | {med * 1e3:.1f} | "
                  f"{q25 * 1e3:.1f} | {base / med:.2f}x |")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["librarian-1.3m", "lumiere-1m"])
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--chunks", action="store_true", help="sweep chunk sizes instead")
    ap.add_argument("--batch", type=int, default=None, help="--chunks: rows per batch")
    args = ap.parse_args()
    from lumenlm.allocator import tune_malloc

    tune_malloc()  # as `lumenlm eval` runs
    if args.chunks:
        chunks(args.presets, args.repeats, args.batch)
        return
    print(f"default SCORE_BLOCK_ELEMENTS = 2^{cl.SCORE_BLOCK_ELEMENTS.bit_length() - 1}")
    print("| preset | rows x vocab | size | median ms | q25 ms | whole / size (median) |")
    print("|---|---|---|---:|---:|---:|")
    default, scores = cl.SCORE_BLOCK_ELEMENTS, cl.token_scores
    for name in args.presets:
        cfg = get_preset(name).model
        shape = suite_shape(name, cfg.context_length)
        n = shape.batch * shape.context
        g = torch.Generator().manual_seed(0)
        w = torch.randn(cfg.vocab_size, cfg.d_model, generator=g) * 0.02
        h = torch.randn(n, cfg.d_model, generator=g)
        t = torch.randint(0, cfg.vocab_size, (n,), generator=g)
        ref = None
        times: dict[str, list[float]] = {k: [] for k in [*SIZES, NLL_ONLY]}
        try:
            for r in range(args.repeats + 1):
                for k, size in [*SIZES.items(), (NLL_ONLY, default)]:
                    cl.SCORE_BLOCK_ELEMENTS = size
                    cl.token_scores = _nll_only if k == NLL_ONLY else scores
                    t0 = time.perf_counter()
                    out = cl.linear_token_scores(h, w, None, t)
                    dt = time.perf_counter() - t0
                    if ref is None:
                        ref = out
                    assert torch.equal(out[0], ref[0]), k
                    assert k == NLL_ONLY or torch.equal(out[1], ref[1]), k
                    if r:  # round 0 warms up
                        times[k].append(dt)
        finally:
            cl.SCORE_BLOCK_ELEMENTS, cl.token_scores = default, scores
        whole = statistics.median(times["whole"])
        for k, v in times.items():
            med, q25 = statistics.median(v), sorted(v)[len(v) // 4]
            print(f"| {name} | {n} x {cfg.vocab_size} | {k} | {med * 1e3:.1f} | "
                  f"{q25 * 1e3:.1f} | {whole / med:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
