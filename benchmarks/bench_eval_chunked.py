"""Evaluation tokens/s and peak memory: chunked scoring vs the full-logits path it replaced.

"after" is today's `lumenlm.evaluate.evaluate_tokens` (final hidden states, the vocabulary
projection one chunk of rows at a time, NLL and target rank per token). "before" is the
same function as it was at `--before-rev` (default b46a4c4, the last commit with the full
(B, T, V) logits, per-row fp32 cross-entropy and top-k), read from git and run in this
process on the same model, tokens and batches. The two alternate after warm-up
(interleaved repeats, so a slow spell of the shared host hits both); the report gives the
median tokens/s of each, the spread (min..max) and the ratio after / before (> 1: the
chunked path is faster). Peak memory is that of one
evaluation: the most bytes held at once by tensors the evaluation creates (counted per
storage by a TorchDispatchMode; the weights are not included), one untimed pass each.

    .venv/bin/python benchmarks/bench_eval_chunked.py [--cases librarian-1.3m lumiere-1m]
"""

from __future__ import annotations

import argparse
import statistics
import time
import weakref
from collections.abc import Callable

import numpy as np
import torch
import torch.utils._pytree
from torch.utils._python_dispatch import TorchDispatchMode

from lumenlm.evaluate import evaluate_tokens
from lumenlm.model import GPT
from lumenlm.presets import get_preset
from revisions import module_at
from shapes import SMALL_LLAMA

SMALL_LLAMA_CTX512 = {**SMALL_LLAMA, "context_length": 512}  # the LumenBase layout, small
CASES: dict[str, tuple[str, dict]] = {
    # name: (preset, overrides); each evaluates windows of its full context, batch 8
    "librarian-1.3m": ("librarian-1.3m", {}),
    "lumiere-1m": ("lumiere-1m", {}),
    "llama-4L-d256-ctx512": ("lumenbase-128m", SMALL_LLAMA_CTX512),
}


def _model(case: str) -> GPT:
    preset, overrides = CASES[case]
    cfg = get_preset(preset).model
    for k, v in overrides.items():
        setattr(cfg, k, v)
    torch.manual_seed(0)
    return GPT(cfg).eval()


def _before(rev: str) -> Callable[..., object]:
    """`evaluate_tokens` as it was at `rev` (its module source from git, run here)."""
    return module_at(rev, "src/lumenlm/evaluate/lm.py").evaluate_tokens


def _tokens(model: GPT, batches: int, batch: int) -> np.ndarray:
    n = batches * batch * model.config.context_length + 1
    return np.random.default_rng(0).integers(0, model.config.vocab_size, n)


class PeakTensorBytes(TorchDispatchMode):
    """The high-water mark of the bytes held by tensors created inside the block: every
    op's outputs are counted by storage (views share their base's) until the last
    tensor on a storage is freed. Deterministic, unlike the process RSS (allocator
    caches and trimming), and blind to nothing torch allocates for results."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[int]] = {}  # data_ptr -> [bytes, tensors on it]
        self.now = self.peak = 0

    def _drop(self, ptr: int) -> None:
        entry = self.live[ptr]
        entry[1] -= 1
        if entry[1] == 0:
            self.now -= entry[0]
            del self.live[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                st = t.untyped_storage()
                ptr = st.data_ptr()
                if ptr not in self.live:
                    self.live[ptr] = [st.nbytes(), 0]
                    self.now += st.nbytes()
                    self.peak = max(self.peak, self.now)
                self.live[ptr][1] += 1
                weakref.finalize(t, self._drop, ptr)
        return out


def _peak_mib(fn: Callable[..., object], model: GPT, tokens: np.ndarray, batch: int) -> float:
    """Peak MiB of tensors alive at once during one evaluation (weights not counted)."""
    with PeakTensorBytes() as meter:
        fn(model, tokens, batch_size=batch, progress=False)
    return meter.peak / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--before-rev", default="b46a4c4")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batches", type=int, default=4, help="batches per evaluation")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    args = ap.parse_args()
    before_fn = _before(args.before_rev)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch "
        f"{args.batch_size}, {args.batches} batches per evaluation, {args.repeats} "
        f"interleaved repeats, before = evaluate_tokens@{args.before_rev}"
    )
    for case in args.cases:
        model = _model(case)
        tokens = _tokens(model, args.batches, args.batch_size)
        sides = {"before": before_fn, "after": evaluate_tokens}
        times: dict[str, list[float]] = {s: [] for s in sides}
        results = {}
        for side, fn in sides.items():  # warm-up, and the metrics of each side
            results[side] = fn(model, tokens, batch_size=args.batch_size, progress=False)
        for _ in range(args.repeats):
            for side, fn in sides.items():
                t = time.perf_counter()
                fn(model, tokens, batch_size=args.batch_size, progress=False)
                times[side].append(time.perf_counter() - t)
        n = results["after"].tokens
        rate = {s: [n / t for t in ts] for s, ts in times.items()}
        med = {s: statistics.median(r) for s, r in rate.items()}
        same = abs(results["after"].loss - results["before"].loss) <= 1e-5 * results[
            "before"
        ].loss and (results["after"].top1, results["after"].top5, results["after"].top10) == (
            results["before"].top1,
            results["before"].top5,
            results["before"].top10,
        )
        line = f"{case}: {n} tokens; " + "; ".join(
            f"{s} {med[s]:,.0f} tok/s ({min(rate[s]):,.0f}..{max(rate[s]):,.0f})" for s in sides
        )
        line += f"; after/before {med['after'] / med['before']:.2f}x; metrics equal: {same}"
        if not args.no_memory:
            mem = {s: _peak_mib(fn, model, tokens, args.batch_size) for s, fn in sides.items()}
            line += "; peak tensor memory " + ", ".join(f"{s} {mem[s]:.1f} MiB" for s in sides)
        print(line, flush=True)


if __name__ == "__main__":
    main()
