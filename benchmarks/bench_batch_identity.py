"""How often does a greedy token change when a request shares a batch? (fp32, CPU)

For each model (random init, seeded), 32 prompts of 1 to 96 random token ids each
decode 64 greedy tokens twice through `BatchEngine`: all 32 together (one batch of 32
slots) and each alone. Reports the sequences whose tokens differ and, for those, the
first step where they part. Prompts long enough to slide past the context are included
(context 128 for librarian-1.3m).

    .venv/bin/python benchmarks/bench_batch_identity.py [--tokens 64] [--prompts 32]
"""

from __future__ import annotations

import argparse
import random

import torch

from lumenlm.infer.batch_engine import BatchEngine
from lumenlm.infer.sampling import SamplingParams
from lumenlm.model import GPT
from lumenlm.presets import get_preset


def models() -> dict[str, GPT]:
    torch.manual_seed(0)
    out = {"librarian-1.3m": GPT(get_preset("librarian-1.3m").model).eval()}
    torch.manual_seed(0)
    out["tiny (Llama style, GQA)"] = GPT(get_preset("tiny").model.replace(vocab_size=8000)).eval()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(0)
    for name, model in models().items():
        vocab = model.config.vocab_size
        prompts = [[rng.randrange(vocab) for _ in range(1 + 3 * i)] for i in range(args.prompts)]
        eng = BatchEngine(model, None, slots=args.prompts)
        p = SamplingParams(max_new_tokens=args.tokens, temperature=0, ignore_eos=True)
        together = [s.collect()[0] for s in [eng.submit(r, p) for r in prompts]]
        alone = [eng.submit(r, p).collect()[0] for r in prompts]
        eng.close()
        parts = [
            next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
            for a, b in zip(alone, together)
            if a != b
        ]
        print(
            f"{name}: {len(parts)} of {args.prompts} greedy sequences differ alone vs in a "
            f"batch of {args.prompts} ({args.prompts * args.tokens} tokens compared); "
            f"first differing steps: {parts}"
        )


if __name__ == "__main__":
    main()
