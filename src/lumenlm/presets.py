"""Named presets: the three seed model cards plus tiny models for tests.

Each preset carries its card's architecture *and* its training recipe, so
`lumenlm train --preset librarian-1.3m` reproduces the card without extra flags.
Parameter counts are exact and checked by the tests against the built model.

The architectures start from the two families every preset belongs to (GPT-2 style
and Llama style, the two that export maps to transformers classes) and the recipes
from what the seed cards share, so each preset states only what sets it apart; every
value a card depends on is still written here, never left to a `ModelConfig` or
`TrainConfig` default that could change under it.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from lumenlm.config import ModelConfig, Preset, TrainConfig
from lumenlm.errors import ConfigError

CHAT_SPECIALS = ["<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>"]

# GPT-2: LayerNorm with bias, GELU MLP, learned positions, biases on every linear, tied.
_GPT2_STYLE = ModelConfig(
    norm="layernorm",
    norm_bias=True,
    activation="gelu",
    positions="learned",
    attn_bias=True,
    mlp_bias=True,
    tie_embeddings=True,
)
# Llama: RMSNorm, SwiGLU MLP, RoPE, no biases; tied here, as all our presets are.
_LLAMA_STYLE = ModelConfig(
    norm="rmsnorm",
    norm_bias=False,
    activation="swiglu",
    positions="rope",
    attn_bias=False,
    mlp_bias=False,
    tie_embeddings=True,
)

# What all three seed cards' recipes state: cosine decay to 10% of the peak, beta1 0.9,
# gradient clipping at 1.0, automatic precision, an evaluation at every epoch's end.
_CARD_TRAIN = TrainConfig(
    batch_size=32,
    grad_accum=1,
    min_lr_ratio=0.1,
    beta1=0.9,
    grad_clip=1.0,
    precision="auto",
    eval_each_epoch=True,
)
# Librarian's and Lumiere's original training code on top of that: Adam's default
# beta2, light weight decay, and early stopping after 5 epochs without improvement.
_SMALL_CARD_TRAIN = dataclasses.replace(
    _CARD_TRAIN,
    weight_decay=0.01,
    beta2=0.999,
    early_stopping_patience=5,
    early_stopping_min_delta=1e-4,
    early_stopping_on="epoch",
)

# The tiny test models: a few hundred thousand parameters, seconds to train on a CPU.
_TINY_SIZE = {"vocab_size": 512, "context_length": 64, "d_model": 64, "n_layers": 2, "n_heads": 4}
_TINY_TRAIN = TrainConfig(batch_size=8, lr=1e-3, warmup_steps=10, max_epochs=1, eval_interval=50)
_TINY_TOKENIZER = {"vocab_size": 512, "special_tokens": CHAT_SPECIALS}


def _librarian() -> Preset:
    # Librarian-Base-v0: GPT-2 style, 1,305,600 parameters exactly.
    return Preset(
        name="librarian-1.3m",
        description="Librarian-Base-v0: GPT-2 style (learned positions, LayerNorm, GELU), TinyStories 2%",
        model=_GPT2_STYLE.replace(
            vocab_size=8000,
            context_length=128,
            d_model=128,
            n_layers=2,
            n_heads=4,
            d_ff=256,
            norm_eps=1e-5,
            init="gpt2",
        ).with_dropout(0.2),
        train=dataclasses.replace(
            _SMALL_CARD_TRAIN, lr=1e-4, warmup_steps=100, max_epochs=20, eval_interval=500
        ),
        dataset="tinystories",
        tokenizer={"vocab_size": 8000, "special_tokens": CHAT_SPECIALS, "fraction": 0.02},
        card={
            "metrics": {
                "loss": 2.5466,
                "perplexity": 12.7630,
                "top1": 0.4537,
                "top5": 0.7245,
                "top10": 0.8023,
            }
        },
    )


def _lumiere() -> Preset:
    # Lumiere: RMSNorm + SwiGLU + learned positions, d_key = d_value = 32, tied output
    # projection, biased attention projections and bias-free SwiGLU (as in the original code).
    return Preset(
        name="lumiere-1m",
        description="Lumiere: RMSNorm/SwiGLU, learned positions, d_key=d_value=32, WikiText-2, stride-8 windows",
        model=_LLAMA_STYLE.replace(
            positions="learned",
            attn_bias=True,
            vocab_size=4096,
            context_length=64,
            d_model=128,
            n_layers=4,
            n_heads=4,
            d_head=32,
            d_value=32,
            d_ff=256,
            norm_eps=1e-6,
            init="gpt2",
        ).with_dropout(0.1),
        train=dataclasses.replace(
            _SMALL_CARD_TRAIN,
            lr=3e-4,
            warmup_steps=500,
            max_epochs=250,
            stride=8,
            eval_interval=1000,
            eval_batches=178,
        ),
        dataset="wikitext-2",
        tokenizer={"vocab_size": 4096, "special_tokens": ["<|endoftext|>", "<|pad|>"]},
        card={"metrics": {"loss": 4.4180, "perplexity": 85.01}},
    )


def _lumenbase() -> Preset:
    # LumenBase: Llama-style (RMSNorm, SwiGLU, RoPE, GQA 12q/4kv), tied, no biases.
    return Preset(
        name="lumenbase-128m",
        description="LumenBase: Llama-style RMSNorm/SwiGLU/RoPE, GQA 12q/4kv, ctx 2048, vocab 32K",
        model=_LLAMA_STYLE.replace(
            vocab_size=32000,
            context_length=2048,
            d_model=768,
            n_layers=12,
            n_heads=12,
            n_kv_heads=4,
            d_head=64,
            d_ff=3072,
            norm_eps=1e-5,
            rope_theta=10000.0,
            init="gpt2",
        ).with_dropout(0.1),
        # A GPT-3 style recipe: 48 sequences a step, AdamW (0.9, 0.95), decay 0.1.
        train=dataclasses.replace(
            _CARD_TRAIN,
            batch_size=12,
            grad_accum=4,
            lr=3e-4,
            weight_decay=0.1,
            beta2=0.95,
            warmup_steps=2000,
            max_epochs=1,
            eval_interval=500,
        ),
        dataset="text",
        tokenizer={"vocab_size": 32000, "special_tokens": CHAT_SPECIALS},
        card={"tasks": {"arc-easy": 0.3948, "arc-challenge": 0.2355, "hellaswag": 0.3262}},
    )


def _tiny() -> Preset:
    # A few-hundred-thousand-parameter Llama-style model for tests and CPU demos.
    return Preset(
        name="tiny",
        description="tiny Llama-style model for tests and smoke runs",
        model=_LLAMA_STYLE.replace(**_TINY_SIZE, n_kv_heads=2, d_ff=128),
        train=_TINY_TRAIN,
        tokenizer=_TINY_TOKENIZER,
    )


def _tiny_gpt2() -> Preset:
    return Preset(
        name="tiny-gpt2",
        description="tiny GPT-2 style model for tests and smoke runs",
        model=_GPT2_STYLE.replace(**_TINY_SIZE, d_ff=256),
        train=_TINY_TRAIN,
        tokenizer=_TINY_TOKENIZER,
    )


_BUILDERS = {
    "librarian-1.3m": _librarian,
    "lumiere-1m": _lumiere,
    "lumenbase-128m": _lumenbase,
    "tiny": _tiny,
    "tiny-gpt2": _tiny_gpt2,
}


# Named recipes: "card" is the preset's own recipe, unchanged; "fast" is tuned for short,
# time-budgeted CPU runs (benchmarks/RESULTS.md has the measurements behind each choice):
# a peak lr ten or more times the card's, a short warmup, warmup-stable-decay so that the
# decay ends with `--max-minutes`, no dropout where the run is too short to overfit, Muon
# on the blocks' matrices, half the card's batch (Librarian), and evaluation only every
# 1,000 steps and at the end (each one costs about 11 s of a 10-minute budget).
_FEW_EVALS = {
    "eval_interval": 1000,
    "eval_each_epoch": False,
    "checkpoint_each_epoch": False,
    "early_stopping_patience": None,
}
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "librarian-1.3m": {
        "fast": {"lr": 4e-3, "warmup_steps": 20, "dropout": 0.0, "schedule": "wsd",
                 "decay_fraction": 0.3, "batch_size": 16, "optimizer": "muon",
                 "muon_lr": 0.02, **_FEW_EVALS},
    },
    "lumiere-1m": {
        # 0.29M local train tokens are seen many times in 10 minutes: dropout stays
        "fast": {"lr": 2e-3, "warmup_steps": 100, "schedule": "wsd", "decay_fraction": 0.3,
                 "optimizer": "muon", "muon_lr": 0.02, **_FEW_EVALS},
    },
    "lumenbase-128m": {
        "fast": {"lr": 1e-3, "warmup_steps": 50, "dropout": 0.0, "schedule": "wsd",
                 "decay_fraction": 0.3, "eval_interval": 100},
    },
}  # fmt: skip
RECIPE_NAMES = ("card", "fast")


def recipe_overrides(preset: str, recipe: str) -> dict[str, Any]:
    """The `--set` overrides of `recipe` for `preset` ("card": none)."""
    if recipe not in RECIPE_NAMES:
        raise ConfigError(f"unknown recipe {recipe!r}; use one of: {', '.join(RECIPE_NAMES)}")
    if recipe == "card":
        return {}
    try:
        return dict(RECIPES[preset][recipe])
    except KeyError:
        raise ConfigError(
            f"preset {preset!r} has no {recipe!r} recipe; use --recipe card"
        ) from None


def preset_names() -> list[str]:
    """All preset names, seed cards first."""
    return list(_BUILDERS)


def get_preset(name: str) -> Preset:
    """A fresh copy of preset `name` (safe to mutate)."""
    try:
        return copy.deepcopy(_BUILDERS[name]())
    except KeyError:
        raise ConfigError(
            f"unknown preset {name!r}; use one of: {', '.join(_BUILDERS)} (`lumenlm presets`)"
        ) from None


def count_parameters(cfg: ModelConfig) -> int:
    """Exact parameter count of the model `cfg` describes (tied weights counted once)."""
    d, ff, v = cfg.d_model, cfg.d_ff, cfg.vocab_size
    assert cfg.n_kv_heads is not None and cfg.d_head is not None and cfg.d_value is not None
    h, kv, dh, dv = cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_value

    def linear(n_in: int, n_out: int, bias: bool) -> int:
        return n_in * n_out + (n_out if bias else 0)

    norm = d * (2 if cfg.norm == "layernorm" and cfg.norm_bias else 1)
    attn = (
        linear(d, h * dh, cfg.attn_bias)
        + linear(d, kv * dh, cfg.attn_bias)
        + linear(d, kv * dv, cfg.attn_bias)
        + linear(h * dv, d, cfg.attn_bias)
    )
    if cfg.activation == "swiglu":
        mlp = 2 * linear(d, ff, cfg.mlp_bias) + linear(ff, d, cfg.mlp_bias)
    else:
        mlp = linear(d, ff, cfg.mlp_bias) + linear(ff, d, cfg.mlp_bias)
    block = attn + mlp + 2 * norm
    total = v * d + cfg.n_layers * block
    if cfg.positions == "learned":
        total += cfg.context_length * d
    if cfg.pre_norm:
        total += norm  # final norm
    if not cfg.tie_embeddings:
        total += v * d
    if cfg.lm_head_bias:
        total += v
    return total
