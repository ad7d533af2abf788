"""Model shapes shared by the benchmarks."""

from __future__ import annotations

from dataclasses import dataclass, replace

# The LumenBase layout (GQA 8/4, SwiGLU, RMSNorm, RoPE) at a size a 2-core CPU runs a
# training step of in about half a second: 4 layers, d_model 256, vocab 8000.
SMALL_LLAMA: dict[str, int] = {
    "n_layers": 4,
    "d_model": 256,
    "n_heads": 8,
    "n_kv_heads": 4,
    "d_head": 32,
    "d_ff": 1024,
    "vocab_size": 8000,
}


@dataclass(frozen=True)
class SuiteShape:
    """What `python -m benchmarks` runs for one preset: every toolkit gets these shapes.

    train/eval: `batch` rows of `context` tokens (the preset's weights and layout, its
    context cut to `context` where a 2-core CPU could not run the full one in minutes);
    prefill: one prompt of `prefill` tokens; decode: a `prompt`-token prompt and exactly
    `new_tokens` new ones at each batch size in `decode_batches`; `dropout`: the
    preset's dropout rate, at which each toolkit times its training step a second time
    (its own dropout code: what a user training the preset pays), 0 for none.
    """

    batch: int
    context: int
    prefill: int
    prompt: int
    new_tokens: int
    decode_batches: tuple[int, ...] = (1, 8)
    dropout: float = 0.0


SUITE_SHAPES: dict[str, SuiteShape] = {
    # the card's batch and context (32 x 128); the preset's dropout, 0.2
    "librarian-1.3m": SuiteShape(
        batch=32, context=128, prefill=128, prompt=16, new_tokens=64, dropout=0.2
    ),
    # the card's batch and context (32 x 64): 16 + 32 positions fit its 64-position table;
    # the preset's dropout, 0.1
    "lumiere-1m": SuiteShape(
        batch=32, context=64, prefill=64, prompt=16, new_tokens=32, dropout=0.1
    ),
    # the real 128M weights (12 layers, d 768, vocab 32000), one row of 256 tokens: a
    # training step is about 200 GFLOP, seconds on 2 cores (the card's 12 x 2048 is hours).
    # No dropout task: HF's LlamaForCausalLM drops attention probabilities only (no
    # embedding or residual dropout), so the two steps would not be the same computation.
    "lumenbase-128m": SuiteShape(batch=1, context=256, prefill=256, prompt=16, new_tokens=32),
}

QUICK_SHAPE = SuiteShape(
    batch=2, context=32, prefill=16, prompt=8, new_tokens=8, decode_batches=(1, 2), dropout=0.1
)
"""`--quick`: a smoke run that checks every code path, not a measurement."""


def suite_shape(preset: str, context_length: int, quick: bool = False) -> SuiteShape:
    """The shapes for `preset` (a model of `context_length` positions): its entry in
    SUITE_SHAPES, else 4 rows of up to 64 tokens; `quick` shrinks either to QUICK_SHAPE,
    cut to fit the context."""
    shape = QUICK_SHAPE if quick else SUITE_SHAPES.get(preset)
    if shape is None:
        ctx = min(64, context_length)
        shape = SuiteShape(batch=4, context=ctx, prefill=ctx, prompt=8, new_tokens=16)
    fit = min(shape.prompt + shape.new_tokens, context_length)
    return replace(
        shape,
        context=min(shape.context, context_length),
        prefill=min(shape.prefill, context_length),
        prompt=min(shape.prompt, fit - 1),
        new_tokens=fit - min(shape.prompt, fit - 1),
    )
