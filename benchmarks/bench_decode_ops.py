"""Two per-token ops of greedy decoding, each against what it replaced, in whole calls.

- GELU: the decode step's `_gelu` (ATen's kernel through a transposed view) against
  `torch._C._nn.gelu` on the contiguous tensor (which goes to oneDNN);
- greedy's argmax: `sampling._nan_argmax` (numpy's argmax on CPU) against
  `nan_to_num(...).argmax()` in torch.

For each preset (seeded weights, no dropout): `lumenlm.infer.generate`, greedy, the
suite's prompt and new-token counts (16+64 librarian, 16+32 lumiere) at batch 1 and 8,
EOS ignored. The variants alternate within each round (interleaved, so a slow spell of
a shared host hits all); reported: tokens/s (median over rounds) and each variant's
speed against "before" (the median of the per-round ratios). All variants must give
the same tokens.

    .venv/bin/python benchmarks/bench_decode_ops.py [--rounds 20] [--presets librarian-1.3m lumiere-1m]
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager
from typing import Any

import torch

import lumenlm.infer.sampling as sampling
import lumenlm.model.decode_step as ds
from lumenlm.allocator import tune_malloc
from shapes import suite_shape

NEG_INF = float("-inf")


def _torch_gelu(x: torch.Tensor, approximate: str) -> torch.Tensor:
    return torch._C._nn.gelu(x, approximate=approximate)


def _torch_argmax(x: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(x, nan=NEG_INF, neginf=NEG_INF).argmax(dim=-1)


VARIANTS = {
    "before (oneDNN GELU, torch argmax)": (_torch_gelu, _torch_argmax),
    "ATen GELU": (ds._gelu, _torch_argmax),
    "ATen GELU + numpy argmax (now)": (ds._gelu, sampling._nan_argmax),
}


@contextmanager
def variant(gelu: Any, argmax: Any) -> Any:
    saved = ds._gelu, sampling._nan_argmax
    ds._gelu, sampling._nan_argmax = gelu, argmax
    try:
        yield
    finally:
        ds._gelu, sampling._nan_argmax = saved


def main() -> None:
    from lumenlm.infer import generate
    from lumenlm.model import GPT
    from lumenlm.presets import get_preset

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", nargs="+", default=["librarian-1.3m", "lumiere-1m"])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    args = ap.parse_args()
    print(f"malloc {tune_malloc()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| preset | batch | variant | tok/s | vs before |")
    print("|---|---:|---|---:|---:|")
    for name in args.presets:
        cfg = get_preset(name).model.with_dropout(0.0)
        shape = suite_shape(name, cfg.context_length)
        torch.manual_seed(0)
        model = GPT(cfg).eval()
        for b in args.batches:
            g = torch.Generator().manual_seed(100 + b)
            prompts = torch.randint(0, cfg.vocab_size, (b, shape.prompt), generator=g).tolist()
            rates: dict[str, list[float]] = {k: [] for k in VARIANTS}
            ids: dict[str, Any] = {}
            for r in range(args.rounds + 1):  # round 0 warms up
                for key, (gelu, argmax) in VARIANTS.items():
                    with variant(gelu, argmax):
                        t = time.perf_counter()
                        out = generate(model, prompts, temperature=0,
                                       max_new_tokens=shape.new_tokens, ignore_eos=True)  # fmt: skip
                        took = time.perf_counter() - t
                    ids[key] = [o.token_ids for o in out]
                    if r:
                        rates[key].append(b * shape.new_tokens / took)
            base = rates[next(iter(VARIANTS))]
            assert all(v == next(iter(ids.values())) for v in ids.values()), "tokens differ"
            for key, v in rates.items():
                ratio = statistics.median(a / c for a, c in zip(v, base))
                print(f"| {name} | {b} | {key} | {statistics.median(v):,.0f} | {ratio:.3f}x |")


if __name__ == "__main__":
    main()
