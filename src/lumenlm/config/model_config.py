"""The model architecture: one `ModelConfig` for every seed architecture.

One dataclass expresses all three seed architectures (GPT-2 style Librarian,
RMSNorm/SwiGLU Lumiere, Llama-style LumenBase) by switches rather than subclasses, so
a run, a saved model and an export read the same fields. Each field carries an
attribute docstring (read by `lumenlm.config.docs` for `presets --show` and `--help`);
a new field needs one, or the tests fail.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from lumenlm.config.choices import Activation, Init, Norm, Positions, check_choice
from lumenlm.config.mapping import check_types, from_dict
from lumenlm.errors import ConfigError


@dataclass
class ModelConfig:
    """Architecture of a decoder-only Transformer.

    Per-head key/query width `d_head` and value width `d_value` default to
    `d_model // n_heads` but may differ (the Lumiere card uses explicit d_key/d_value).
    `n_kv_heads` < `n_heads` gives grouped-query attention (1 = multi-query).
    """

    vocab_size: int = 50304
    """Number of token ids: rows of the token embedding and outputs of the LM head.
    `lumenlm train` takes it from the prepared dataset when the two differ."""
    context_length: int = 1024
    """Tokens per sequence the model trains on (every training and validation window).
    With learned positions it is also the size of the position table, which no input may
    exceed; generation keeps to it by sliding its window."""
    d_model: int = 768
    """Width of the residual stream, i.e. the embedding size."""
    n_layers: int = 12
    """Number of Transformer blocks."""
    n_heads: int = 12
    """Query heads per attention layer."""
    n_kv_heads: int | None = None
    """Key/value heads per attention layer; must divide n_heads. Fewer than n_heads is
    grouped-query attention (1 = multi-query): smaller K/V projections and KV cache.
    None = n_heads (plain multi-head attention)."""
    d_head: int | None = None
    """Per-head width of queries and keys. None = d_model // n_heads, which needs n_heads
    to divide d_model; must be even with RoPE."""
    d_value: int | None = None
    """Per-head width of values; the heads' concatenated output (n_heads * d_value) is
    projected back to d_model. None = d_head."""
    d_ff: int = 3072
    """Hidden width of the feed-forward block (of both the gate and up projections with
    SwiGLU)."""
    norm: Norm = "layernorm"
    """Normalization layer: layernorm (mean and variance, gain and optional bias) or
    rmsnorm (root mean square only, computed in float32, gain only)."""
    norm_bias: bool = True
    """Give each LayerNorm a learned bias. RMSNorm has none, so it ignores this."""
    norm_eps: float = 1e-5
    """Small constant added to the variance (or mean square) before the square root, for
    numerical safety; in (0, 1)."""
    activation: Activation = "gelu"
    """Feed-forward type: gelu (exact GELU MLP, GPT-2), gelu_tanh (its tanh approximation)
    or swiglu (silu(gate) * up, then down, as in Llama: one more d_model x d_ff matrix)."""
    positions: Positions = "learned"
    """How the model sees token order: learned (a trained embedding per absolute position,
    added to the token embedding) or rope (rotary embeddings of queries and keys in every
    attention layer, no parameters)."""
    rope_theta: float = 10000.0
    """Base of the RoPE rotation frequencies; larger values rotate more slowly, which suits
    longer contexts. Used only with positions=rope."""
    attn_bias: bool = True
    """Biases on the attention projections (q, k, v and output)."""
    mlp_bias: bool = True
    """Biases on the feed-forward projections."""
    lm_head_bias: bool = False
    """A bias on the LM head, the output layer that produces the vocabulary logits."""
    tie_embeddings: bool = True
    """Share one matrix between the token embedding and the LM head, saving
    vocab_size * d_model parameters."""
    embd_dropout: float = 0.0
    """Dropout probability on the embeddings entering the first block; training only,
    in [0, 1). `--set dropout=P` sets all three dropout rates."""
    attn_dropout: float = 0.0
    """Dropout probability on the attention probabilities; training only, in [0, 1)."""
    resid_dropout: float = 0.0
    """Dropout probability on each attention and feed-forward output before it is added to
    the residual stream; training only, in [0, 1)."""
    pre_norm: bool = True
    """Normalize each sublayer's input (pre-norm, as GPT-2 and Llama, with a final norm
    before the LM head); false normalizes after each residual addition (post-norm, the
    original Transformer, no final norm)."""
    init: Init = "gpt2"
    """Weight initialization: gpt2 draws weights from N(0, init_std) and scales the
    residual output projections by 1/sqrt(2 * n_layers); normal uses N(0, init_std) for
    all. Biases start at zero and norm gains at one either way."""
    init_std: float = 0.02
    """Standard deviation of the normal initialization of linear and embedding weights."""
    ignore_index: int = -100
    """Target id that the loss skips (cross-entropy's ignore_index). Token windows never
    hold it; it matters only to callers that pass their own masked targets."""

    def __post_init__(self) -> None:
        check_types(self)
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.d_head is None and self.n_heads > 0 and self.d_model % self.n_heads == 0:
            self.d_head = self.d_model // self.n_heads
        if self.d_value is None:
            self.d_value = self.d_head
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigError` naming the first field that is impossible."""
        for name in ("vocab_size", "context_length", "d_model", "n_layers", "n_heads", "d_ff"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(
                    f"{name} must be a positive integer, got {value!r}; set a value >= 1"
                )
        if self.d_head is None:
            raise ConfigError(
                f"n_heads={self.n_heads} does not divide d_model={self.d_model}; "
                "choose n_heads that divides d_model or set d_head explicitly"
            )
        for name in ("n_kv_heads", "d_head", "d_value"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(
                    f"{name} must be a positive integer, got {value!r}; set a value >= 1"
                )
        assert self.n_kv_heads is not None
        if self.n_heads % self.n_kv_heads != 0:
            raise ConfigError(
                f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads} "
                "(GQA shares each KV head among a whole group of query heads)"
            )
        check_choice("norm", self.norm, Norm)
        check_choice("activation", self.activation, Activation)
        check_choice("positions", self.positions, Positions)
        check_choice("init", self.init, Init)
        if self.positions == "rope" and self.d_head % 2 != 0:
            raise ConfigError(f"RoPE needs an even d_head, got d_head={self.d_head}")
        if self.rope_theta <= 0:
            raise ConfigError(f"rope_theta must be positive, got {self.rope_theta}")
        if not (0 < self.norm_eps < 1):
            raise ConfigError(f"norm_eps must be in (0, 1), got {self.norm_eps}")
        for name in ("embd_dropout", "attn_dropout", "resid_dropout"):
            value = getattr(self, name)
            if not (0.0 <= value < 1.0):
                raise ConfigError(f"{name} must be in [0, 1), got {value}; use e.g. 0.1")
        if self.init_std <= 0 or not math.isfinite(self.init_std):
            raise ConfigError(f"init_std must be positive, got {self.init_std}")

    @property
    def n_rep(self) -> int:
        """Query heads per KV head."""
        assert self.n_kv_heads is not None
        return self.n_heads // self.n_kv_heads

    def replace(self, **changes: Any) -> ModelConfig:
        """A validated copy with `changes`, re-deriving dependent widths.

        Fields that were derived (d_head = d_model / n_heads, d_value = d_head,
        n_kv_heads = n_heads) follow their sources unless set explicitly, so
        `cfg.replace(d_model=256)` does not keep a stale d_head.
        """
        assert self.n_heads > 0
        if ("d_model" in changes or "n_heads" in changes) and "d_head" not in changes:
            if self.d_head == self.d_model // self.n_heads:
                changes["d_head"] = None
        if "d_head" in changes and "d_value" not in changes and self.d_value == self.d_head:
            changes["d_value"] = None
        if "n_heads" in changes and "n_kv_heads" not in changes and self.n_kv_heads == self.n_heads:
            changes["n_kv_heads"] = None
        return from_dict(ModelConfig, {**self.to_dict(), **changes})

    def with_dropout(self, p: float) -> ModelConfig:
        """A copy with all three dropout rates set to `p`."""
        return dataclasses.replace(self, embd_dropout=p, attn_dropout=p, resid_dropout=p)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return from_dict(cls, data)
