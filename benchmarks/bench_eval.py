"""Multiple-choice scoring speed: shared-context batching vs one row per choice, and
today's scorer against an older revision's.

Both paths score the same questions with the same model and tokenizer, in one process,
interleaved repeats; reports questions/s (median) and the speed-up ratio (naive time /
shared time: > 1 means sharing the context pass is faster). The naive path is lm-eval's
layout (one right-padded row per choice, same batch of questions); it is also what every
question takes that does not fit the model's window (most of ARC at Lumiere's 64).

`--against REV` also runs `evaluate/multiple_choice.py` as it was at git revision REV
(for example 8ecc3c3, before the head ran only at the scored positions), interleaved
with today's, and reports today's speed-up over it for each path.

    .venv/bin/python benchmarks/bench_eval.py [--tasks-dir ../shared/data] [--limit 256]
        [--task arc-easy|hellaswag] [--against REV]
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lumenlm.evaluate import load_task, score_items, tokenizer_encoder
from lumenlm.model import GPT
from lumenlm.presets import get_preset
from revisions import module_at
from shapes import SMALL_LLAMA
from timing import timed

CASES = [
    # (label, preset, overrides)
    ("librarian-1.3m (GPT-2, ctx 128)", "librarian-1.3m", {}),
    ("lumiere-1m (ctx 64)", "lumiere-1m", {}),
    (
        "lumenbase-style 4L d256 (Llama, ctx 512)",
        "lumenbase-128m",
        {
            **SMALL_LLAMA,
            "context_length": 512,
        },
    ),
]


def _tokenizer(arc_dir: Path, vocab: int) -> Tokenizer:
    text = (arc_dir / "ARC-Easy-Train.jsonl").read_text(encoding="utf-8")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        [text],
        trainers.BpeTrainer(
            vocab_size=vocab,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    return tok


def main() -> None:
    default_dir = os.environ.get("LUMENLM_DATA") or str(
        Path(__file__).resolve().parents[2] / "shared" / "data"
    )
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks-dir", default=default_dir)
    ap.add_argument("--task", default="arc-easy")
    ap.add_argument("--limit", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--against", metavar="REV", help="also time the scorer of this git revision")
    args = ap.parse_args()
    scorers: dict[str, Callable[..., object]] = {"today": score_items}
    if args.against:
        scorers[args.against] = module_at(
            args.against, "src/lumenlm/evaluate/multiple_choice.py"
        ).score_items

    items = load_task(args.task, args.tasks_dir, args.limit, download=False)
    print(
        f"{args.task}: {len(items)} questions, batch {args.batch_size} questions, "
        f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    for label, preset, overrides in CASES:
        cfg = get_preset(preset).model
        for k, v in overrides.items():
            setattr(cfg, k, v)
        torch.manual_seed(0)
        model = GPT(cfg).to(args.device).eval()
        encode = tokenizer_encoder(_tokenizer(Path(args.tasks_dir) / "arc", cfg.vocab_size))
        times: dict[tuple[str, bool], list[float]] = {}
        for score in scorers.values():
            score(model, encode, items[:16], args.batch_size, progress=False)  # warm-up
        for _ in range(args.repeats):
            for name, score in scorers.items():
                for shared in (True, False):
                    run = partial(
                        score, model, encode, items, args.batch_size, shared=shared, progress=False
                    )
                    times.setdefault((name, shared), []).append(timed(run, args.device)[0])
        med = {key: statistics.median(v) for key, v in times.items()}
        shared_t, naive_t = med[("today", True)], med[("today", False)]
        line = (
            f"{label}: shared {len(items) / shared_t:8.1f} q/s   naive {len(items) / naive_t:8.1f} q/s"
            f"   ratio naive/shared {naive_t / shared_t:.2f}x"
        )
        if args.against:
            old_s, old_n = med[(args.against, True)], med[(args.against, False)]
            line += (
                f"\n    {args.against}: shared {len(items) / old_s:8.1f} q/s   naive "
                f"{len(items) / old_n:8.1f} q/s   today/{args.against}: shared "
                f"{old_s / shared_t:.2f}x, naive {old_n / naive_t:.2f}x"
            )
        print(line, flush=True)


if __name__ == "__main__":
    main()
