"""Perplexity evaluation speed in fp32 vs bf16 weights (`lumenlm eval --dtype`), same model.

Scores the same random token stream with `evaluate_tokens` (full windows, batch 16)
with fp32 weights and with the same weights in bfloat16; reports tokens/s, the
speed-up and both losses (bf16 changes them by rounding only). Interleaved repeats,
best of each.

    .venv/bin/python benchmarks/bench_eval_dtype.py [--device cpu] [--tokens 40000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch

from lumenlm.evaluate.lm import evaluate_tokens
from lumenlm.model import GPT
from lumenlm.presets import get_preset
from shapes import SMALL_LLAMA
from timing import timed

CASES = [
    ("librarian-1.3m (GPT-2, ctx 128)", "librarian-1.3m", {}),
    ("Llama-style 4L d256 (ctx 256)", "lumenbase-128m", {**SMALL_LLAMA, "context_length": 256}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tokens", type=int, default=40_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()}")
    print(
        f"{'case':32} {'fp32 tok/s':>11} {'bf16 tok/s':>11} {'speed-up':>9} {'loss fp32':>10} {'loss bf16':>10}"
    )
    for label, preset, overrides in CASES:
        torch.manual_seed(0)
        cfg = get_preset(preset).model.with_dropout(0.0).replace(**overrides)
        fp32 = GPT(cfg).to(args.device).eval()
        bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
        tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, args.tokens)
        best = {"fp32": float("inf"), "bf16": float("inf")}
        loss = {}
        with torch.no_grad():
            for _ in range(args.repeats):  # interleaved so slow spells hit both
                for name, model in (("fp32", fp32), ("bf16", bf16)):
                    seconds, res = timed(
                        lambda m=model, t=tokens: evaluate_tokens(
                            m, t, batch_size=16, progress=False
                        ),
                        args.device,
                    )
                    best[name] = min(best[name], seconds)
                    loss[name] = res.loss
        a, b = args.tokens / best["fp32"], args.tokens / best["bf16"]
        print(
            f"{label:32} {a:11.0f} {b:11.0f} {b / a:8.2f}x {loss['fp32']:10.4f} {loss['bf16']:10.4f}"
        )


if __name__ == "__main__":
    main()
