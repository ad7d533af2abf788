"""transformers configuration for lumenlm models that no built-in class holds exactly.

This file is copied into a Hugging Face export (`trust_remote_code=True`) next to
`modeling_lumenlm.py`, so it depends only on transformers: it must work on a machine
without lumenlm. Its fields are lumenlm's `ModelConfig` fields under the same names;
`attribute_map` gives them the standard transformers names too (`hidden_size`,
`max_position_embeddings`, ...), which tools such as lm-evaluation-harness read.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig


class LumenLMConfig(PretrainedConfig):
    """Architecture switches of a lumenlm decoder (norm, MLP, positions, heads, biases)."""

    model_type = "lumenlm"
    keys_to_ignore_at_inference = ["past_key_values"]  # noqa: RUF012 (transformers API)
    attribute_map = {  # noqa: RUF012 (read by transformers as a plain class attribute)
        "hidden_size": "d_model",
        "num_hidden_layers": "n_layers",
        "num_attention_heads": "n_heads",
        "num_key_value_heads": "n_kv_heads",
        "intermediate_size": "d_ff",
        "max_position_embeddings": "context_length",
        "head_dim": "d_head",
    }

    def __init__(
        self,
        vocab_size: int = 50304,
        context_length: int = 1024,
        d_model: int = 768,
        n_layers: int = 12,
        n_heads: int = 12,
        n_kv_heads: int | None = None,
        d_head: int | None = None,
        d_value: int | None = None,
        d_ff: int = 3072,
        norm: str = "layernorm",
        norm_bias: bool = True,
        norm_eps: float = 1e-5,
        activation: str = "gelu",
        positions: str = "learned",
        rope_theta: float = 10000.0,
        attn_bias: bool = True,
        mlp_bias: bool = True,
        lm_head_bias: bool = False,
        pre_norm: bool = True,
        embd_dropout: float = 0.0,
        attn_dropout: float = 0.0,
        resid_dropout: float = 0.0,
        init_std: float = 0.02,
        tie_word_embeddings: bool = True,
        use_cache: bool = True,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.context_length = context_length
        self.d_model = d_model
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads or n_heads
        self.d_head = d_head or d_model // n_heads
        self.d_value = d_value or self.d_head
        self.d_ff = d_ff
        self.norm = norm
        self.norm_bias = norm_bias
        self.norm_eps = norm_eps
        self.activation = activation
        self.positions = positions
        self.rope_theta = rope_theta
        self.attn_bias = attn_bias
        self.mlp_bias = mlp_bias
        self.lm_head_bias = lm_head_bias
        self.pre_norm = pre_norm
        self.embd_dropout = embd_dropout
        self.attn_dropout = attn_dropout
        self.resid_dropout = resid_dropout
        self.init_std = init_std
        self.use_cache = use_cache
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
