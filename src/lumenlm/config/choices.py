"""The string choices of the configs, each named once.

A field that takes one of a few strings is typed with one of these `Literal`s, and
everything else that needs the list (validation, argparse `choices`, error messages,
the precision and schedule code) reads it with `typing.get_args` rather than writing
it out again, so adding a choice is one edit here plus the code that implements it.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from lumenlm.errors import ConfigError

# -- model ---------------------------------------------------------------------------
Norm = Literal["layernorm", "rmsnorm"]
"""Normalization layer of every block (and the final norm)."""
Activation = Literal["gelu", "gelu_tanh", "swiglu"]
"""Feed-forward block: GELU MLP (exact or tanh approximation) or SwiGLU."""
Positions = Literal["learned", "rope"]
"""Position information: a learned absolute table or rotary embeddings."""
Init = Literal["gpt2", "normal"]
"""Weight initialization scheme."""

# -- training ------------------------------------------------------------------------
Schedule = Literal["cosine", "constant", "linear", "wsd"]
"""Learning-rate shape after warmup (`lumenlm.train.schedule.lr_at`); "wsd" is
warmup-stable-decay, whose decay ends with a `--max-minutes` budget."""
Dtype = Literal["fp32", "bf16", "fp16"]
"""A concrete numeric precision: training autocast, or inference weights (`--dtype`)."""
Precision = Literal["auto", Dtype]
"""Training precision: a concrete `Dtype`, or "auto" to pick one for the device."""
Strategy = Literal["ddp", "fsdp"]
"""Multi-process strategy under torchrun: replicate (DDP) or shard (FSDP2)."""
OptimizerName = Literal["adamw", "muon"]
"""The optimizer: AdamW on every parameter, or Muon on the blocks' weight matrices with
AdamW on the rest (`lumenlm.train.muon`)."""
EarlyStoppingOn = Literal["eval", "epoch"]
"""Which evaluations count toward early-stopping patience."""


def check_choice(name: str, value: Any, literal: Any) -> None:
    """Raise a one-line `ConfigError` listing the choices when `value` is not one of them."""
    choices = get_args(literal)
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}")
