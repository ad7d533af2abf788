"""Training step with the chunked linear + cross-entropy vs the plain logits path.

One training step end to end (forward, loss, backward, fused AdamW step, as the trainer
does it: `model(x, y, return_logits=False)`) against the same step through the plain
path (`model(x, y)`: full logits, `.float()`, F.cross_entropy). Same model, weights and
batch; the two sides alternate step by step (interleaved) after warm-up, so a slow spell
of a shared host hits both. Reports the median seconds per step, the spread (min..max)
and the speed-up plain / chunked. `--sweep` also times the loss head alone at several
chunk sizes (how DEFAULT_CHUNK_ELEMENTS was chosen).

    .venv/bin/python benchmarks/bench_loss_chunked.py
    .venv/bin/python benchmarks/bench_loss_chunked.py --models librarian-1.3m --sweep
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lumenlm.config import ModelConfig
from lumenlm.model import GPT
from lumenlm.model.chunked_loss import chunk_rows_for, linear_cross_entropy
from lumenlm.presets import get_preset

LLAMA_D512 = {
    "vocab_size": 32000,
    "context_length": 256,
    "d_model": 512,
    "n_layers": 4,
    "n_heads": 8,
    "n_kv_heads": 4,
    "d_ff": 1408,
    "norm": "rmsnorm",
    "norm_bias": False,
    "activation": "swiglu",
    "positions": "rope",
    "attn_bias": False,
    "mlp_bias": False,
    "tie_embeddings": True,
}
"""A Llama-style d512 model: RoPE, RMSNorm, SwiGLU, GQA 8/4, a 32k vocabulary."""

MODELS: dict[str, tuple[Callable[[], ModelConfig], int, int]] = {
    # name: (config, batch, context); the presets at their own batch and context
    "librarian-1.3m": (lambda: get_preset("librarian-1.3m").model, 32, 128),
    "lumiere-1m": (lambda: get_preset("lumiere-1m").model, 32, 64),
    "llama-d512": (lambda: ModelConfig(**LLAMA_D512), 8, 256),
}


def _no_dropout(cfg: ModelConfig) -> ModelConfig:
    d = {**cfg.__dict__, "embd_dropout": 0.0, "attn_dropout": 0.0, "resid_dropout": 0.0}
    return ModelConfig(**d)


def bench_model(name: str, steps: int, warmup: int) -> dict[str, float]:
    """Interleaved plain/chunked training steps; median seconds per step of each."""
    make, batch, context = MODELS[name]
    torch.manual_seed(0)
    model = GPT(_no_dropout(make()))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randint(0, model.config.vocab_size, (batch, context))
    y = torch.randint(0, model.config.vocab_size, (batch, context))

    def step(chunked: bool) -> float:
        t = time.perf_counter()
        loss = model(x, y, return_logits=not chunked).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(warmup + steps):
        for chunked in (False, True) if i % 2 == 0 else (True, False):
            dt = step(chunked)
            if i >= warmup:
                times[chunked].append(dt)
    plain, fast = statistics.median(times[False]), statistics.median(times[True])
    return {
        "plain": plain,
        "chunked": fast,
        "plain_min": min(times[False]),
        "plain_max": max(times[False]),
        "chunked_min": min(times[True]),
        "chunked_max": max(times[True]),
        "speedup": plain / fast,
        "tokens": batch * context,
    }


def sweep(name: str, repeats: int) -> None:
    """The loss head alone (forward + backward) at several chunk sizes vs plain."""
    make, batch, context = MODELS[name]
    cfg = make()
    g = torch.Generator().manual_seed(0)
    h = torch.randn(batch * context, cfg.d_model, generator=g, requires_grad=True)
    w = (torch.randn(cfg.vocab_size, cfg.d_model, generator=g) * 0.02).requires_grad_(True)
    t = torch.randint(0, cfg.vocab_size, (batch * context,), generator=g)

    def plain() -> None:
        F.cross_entropy(F.linear(h, w).float(), t).backward()

    cases: dict[str, Callable[[], None]] = {"plain": plain}
    for log2 in (19, 20, 21, 22, 23):
        rows = chunk_rows_for(cfg.vocab_size, 1 << log2)
        cases[f"chunk 2^{log2} ({rows} rows)"] = lambda rows=rows: linear_cross_entropy(
            h, w, None, t, chunk_rows=rows
        ).backward()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for r in range(repeats + 1):
        for k, fn in cases.items():
            s = time.perf_counter()
            fn()
            if r:
                times[k].append(time.perf_counter() - s)
    for k, v in times.items():
        print(f"  {name:15s} {k:24s} {statistics.median(v) * 1e3:8.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--sweep", action="store_true", help="also sweep the chunk size")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in args.models:
        if args.sweep:
            sweep(name, repeats=5)
        r = bench_model(name, args.steps, args.warmup)
        print(
            f"{name:15s} plain {r['plain'] * 1e3:7.1f} ms ({r['plain_min'] * 1e3:.0f}.."
            f"{r['plain_max'] * 1e3:.0f})  chunked {r['chunked'] * 1e3:7.1f} ms "
            f"({r['chunked_min'] * 1e3:.0f}..{r['chunked_max'] * 1e3:.0f})  "
            f"speed-up {r['speedup']:.2f}x  ({r['tokens'] / r['chunked']:.0f} vs "
            f"{r['tokens'] / r['plain']:.0f} tokens/s)"
        )


if __name__ == "__main__":
    main()
