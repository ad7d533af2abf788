"""Greedy decode speed: `lumenlm.infer.generate` vs Hugging Face `generate`, same weights.

The HF model comes from `lumenlm.export.hf.export_hf`, so both run identical weights;
the script also checks both produce the same greedy tokens. Each case times batch 1
and batch 8: a short random prompt, then exactly N new tokens (EOS ignored; HF with
`min_new_tokens=N`), interleaved repeats, medians. Tokens/s counts generated tokens
over the whole call (the prompt is short, so this is decode speed). The ratio is
ours / HF: > 1 means lumenlm is faster.

Small models are overhead-bound (Python and framework cost per token); the mid-size
one is closer to compute-bound. Lumiere (RMSNorm + SwiGLU + learned positions) has no
stock transformers class, so only our speed is shown for it.

    .venv/bin/python benchmarks/bench_decode.py [--device cpu] [--repeats 5] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from typing import Any

import torch

from lumenlm.infer import generate
from lumenlm.model import GPT
from lumenlm.presets import get_preset
from timing import timed

CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("librarian-1.3m (GPT-2)", "librarian-1.3m", {}),
    ("lumiere-1m (no HF class)", "lumiere-1m", {}),
    (
        "mid d512 8L (Llama, GQA)",
        "lumenbase-128m",
        {
            "n_layers": 8,
            "d_model": 512,
            "n_heads": 8,
            "n_kv_heads": 4,
            "d_head": 64,
            "d_ff": 1408,
            "vocab_size": 8000,
            "context_length": 512,
        },
    ),
]
BATCHES = (1, 8)
PROMPT_LEN = 16


def build(preset: str, overrides: dict[str, Any], device: str) -> tuple[GPT, Any]:
    """Our model (random weights, eval) and the same weights as an HF model (or None)."""
    from transformers import AutoModelForCausalLM

    from lumenlm.errors import LumenError
    from lumenlm.export.hf import export_hf

    cfg = get_preset(preset).model.with_dropout(0.0).replace(**overrides)
    torch.manual_seed(0)
    ours = GPT(cfg).eval()
    hf = None
    try:
        with tempfile.TemporaryDirectory() as d:
            export_hf(ours, f"{d}/hf")
            hf = (
                AutoModelForCausalLM.from_pretrained(
                    f"{d}/hf", dtype=torch.float32, attn_implementation="sdpa"
                )
                .eval()
                .to(device)
            )
    except LumenError:
        pass
    return ours.to(device), hf


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's choice); on a busy machine 1 "
        "avoids stalls of every small op waiting for a descheduled thread",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    N, dev = args.new_tokens, args.device
    print(
        f"device={dev} torch={torch.__version__} transformers={transformers.__version__} "
        f"threads={torch.get_num_threads()} prompt={PROMPT_LEN} new_tokens={N} "
        f"repeats={args.repeats} (median)"
    )
    print(
        f"{'case':27} {'batch':>5} {'lumenlm tok/s':>14} {'HF tok/s':>10} {'lumenlm/HF':>10} "
        f"{'same tokens':>11}"
    )
    for label, preset, overrides in CASES:
        ours, hf = build(preset, overrides, dev)
        vocab = ours.config.vocab_size
        for B in BATCHES:
            g = torch.Generator().manual_seed(B)
            prompt = torch.randint(0, vocab, (B, PROMPT_LEN), generator=g).to(dev)
            rows = prompt.tolist()

            def run_ours(rows: list[list[int]] = rows, ours: GPT = ours) -> torch.Tensor:
                res = generate(ours, rows, temperature=0, max_new_tokens=N, ignore_eos=True)
                return torch.tensor([r.token_ids for r in res])

            def run_hf(prompt: torch.Tensor = prompt, hf: Any = hf) -> torch.Tensor:
                with torch.inference_mode():
                    out = hf.generate(
                        prompt,
                        attention_mask=torch.ones_like(prompt),
                        do_sample=False,
                        max_new_tokens=N,
                        min_new_tokens=N,
                        pad_token_id=0,
                    )
                return out[:, PROMPT_LEN:].cpu()

            run_ours()  # warm-up
            if hf is not None:
                run_hf()
            t_ours, t_hf = [], []
            same = "-"
            for _ in range(args.repeats):
                t, ours_ids = timed(run_ours, dev)
                t_ours.append(t)
                if hf is not None:
                    t, hf_ids = timed(run_hf, dev)
                    t_hf.append(t)
                    same = "yes" if torch.equal(ours_ids, hf_ids) else "NO"
            ours_tps = B * N / statistics.median(t_ours)
            if hf is None:
                print(f"{label:27} {B:>5} {ours_tps:>14.0f} {'-':>10} {'-':>10} {same:>11}")
                continue
            hf_tps = B * N / statistics.median(t_hf)
            print(
                f"{label:27} {B:>5} {ours_tps:>14.0f} {hf_tps:>10.0f} {ours_tps / hf_tps:>9.2f}x "
                f"{same:>11}"
            )


if __name__ == "__main__":
    main()
