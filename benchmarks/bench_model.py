"""Forward and forward+backward speed of lumenlm's GPT vs Hugging Face transformers.

Same weights (via `lumenlm.export.hf`), same shapes, same process, interleaved
repeats; reports medians and the ratio (HF time / our time: > 1 means we are faster).

    .venv/bin/python benchmarks/bench_model.py [--device cpu] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch

from lumenlm.export.hf import export_hf
from lumenlm.model import GPT
from lumenlm.presets import get_preset
from shapes import SMALL_LLAMA
from timing import timed

CASES = [
    # (label, preset, overrides, batch, seq)
    ("librarian-1.3m (GPT-2)", "librarian-1.3m", {}, 32, 128),
    (
        "lumenbase-style 4L d256 (Llama)",
        "lumenbase-128m",
        {
            **SMALL_LLAMA,
            "context_length": 256,
        },
        8,
        256,
    ),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM

    print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()}")
    print(f"{'case':34} {'mode':9} {'lumenlm ms':>11} {'HF ms':>9} {'HF/lumenlm':>10}")
    for label, preset, overrides, B, T in CASES:
        cfg = get_preset(preset).model.with_dropout(0.0).replace(**overrides)
        ours = GPT(cfg).to(args.device)
        with tempfile.TemporaryDirectory() as d:
            export_hf(ours, f"{d}/hf")
            hf = AutoModelForCausalLM.from_pretrained(
                f"{d}/hf", dtype=torch.float32, attn_implementation="sdpa"
            ).to(args.device)
        x = torch.randint(0, cfg.vocab_size, (B, T), device=args.device)
        for mode in ("forward", "fwd+bwd"):

            def run_ours(mode: str = mode, x: torch.Tensor = x, ours: GPT = ours) -> None:
                if mode == "forward":
                    with torch.no_grad():
                        ours(x)
                else:
                    ours(x, x).loss.backward()

            def run_hf(mode: str = mode, x: torch.Tensor = x, hf=hf) -> None:
                if mode == "forward":
                    with torch.no_grad():
                        hf(x)
                else:
                    hf(x, labels=x).loss.backward()

            run_ours(), run_hf()  # warm-up
            a, b = [], []
            for _ in range(args.repeats):  # interleaved so slow spells hit both
                a.append(timed(run_ours, args.device)[0])
                b.append(timed(run_hf, args.device)[0])
            ma, mb = statistics.median(a) * 1e3, statistics.median(b) * 1e3
            print(f"{label:34} {mode:9} {ma:11.1f} {mb:9.1f} {mb / ma:10.2f}")


if __name__ == "__main__":
    main()
