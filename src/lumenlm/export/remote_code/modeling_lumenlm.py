"""transformers model code for lumenlm decoders that no built-in class holds exactly.

Lumiere (learned positions + RMSNorm + SwiGLU), post-norm blocks, a biased LM head and
every other switch combination of lumenlm's `ModelConfig` have no stock transformers
class. A Hugging Face export of such a model ships this file (and
`configuration_lumenlm.py`) and names them in config.json's `auto_map`, so
`AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)` builds the model.

It depends only on torch and transformers, never on lumenlm: the export must work on a
machine without it. The computation is lumenlm's own `GPT.forward`, written out again
with the same parameter names (`tok_emb`, `blocks.{i}.attn.q_proj`, ...), so the
exported weights are lumenlm's state dict unchanged and the logits agree to float
rounding. Decoding uses transformers' `DynamicCache`; `attention_mask` (1 = token,
0 = padding) and `position_ids` work as in the built-in models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import transformers
from torch import Tensor, nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_lumenlm import LumenLMConfig

_V5 = int(transformers.__version__.split(".")[0]) >= 5
# transformers 5 renamed the cache argument and output field `past_key_values` to `cache`.
_CACHE_FIELD = (
    "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
)


class LumenLMRMSNorm(nn.Module):
    """Root-mean-square norm computed in float32, then cast back (as lumenlm and Llama)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def _norm(cfg: LumenLMConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return LumenLMRMSNorm(cfg.d_model, cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.norm_bias)


def _rope(
    position_ids: Tensor, d_head: int, theta: float, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """cos/sin (B, 1, T, d_head) in the rotate-half layout."""
    exponent = torch.arange(0, d_head, 2, device=position_ids.device, dtype=torch.int64).float()
    inv_freq = 1.0 / (theta ** (exponent / d_head))
    freqs = position_ids.float()[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


def _apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos.to(x.dtype) + torch.cat((-x2, x1), dim=-1) * sin.to(x.dtype)


class LumenLMAttention(nn.Module):
    """Causal self-attention: multi-head, grouped-query or multi-query, optional RoPE."""

    def __init__(self, cfg: LumenLMConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads = cfg.n_heads, cfg.n_kv_heads
        self.d_head, self.d_value = cfg.d_head, cfg.d_value
        self.n_rep = cfg.n_heads // cfg.n_kv_heads
        self.attn_dropout = cfg.attn_dropout
        bias = cfg.attn_bias
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.d_head, bias=bias)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.d_head, bias=bias)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.d_value, bias=bias)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.d_value, cfg.d_model, bias=bias)
        self.resid_dropout = nn.Dropout(cfg.resid_dropout)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None,
        mask: Tensor,
        cache: Cache | None,
    ) -> Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.d_head).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.d_head).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.d_value).transpose(1, 2)
        if rope is not None:
            q, k = _apply_rope(q, *rope), _apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        if self.n_rep > 1:
            k = k.repeat_interleave(self.n_rep, dim=1)
            v = v.repeat_interleave(self.n_rep, dim=1)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.d_value)
        return self.resid_dropout(self.o_proj(y))


class LumenLMMLP(nn.Module):
    """GELU MLP (exact or tanh) or SwiGLU: silu(gate) * up, then down."""

    def __init__(self, cfg: LumenLMConfig) -> None:
        super().__init__()
        self.swiglu = cfg.activation == "swiglu"
        self.approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"
        if self.swiglu:
            self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.mlp_bias)
        self.dropout = nn.Dropout(cfg.resid_dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.swiglu:
            h = F.silu(self.gate_proj(x)) * self.up_proj(x)
        else:
            h = F.gelu(self.up_proj(x), approximate=self.approximate)
        return self.dropout(self.down_proj(h))


class LumenLMBlock(nn.Module):
    """Pre-norm (norm -> sublayer -> residual) or post-norm (sublayer -> residual -> norm)."""

    def __init__(self, cfg: LumenLMConfig, layer_idx: int) -> None:
        super().__init__()
        self.pre_norm = cfg.pre_norm
        self.attn_norm = _norm(cfg)
        self.attn = LumenLMAttention(cfg, layer_idx)
        self.mlp_norm = _norm(cfg)
        self.mlp = LumenLMMLP(cfg)

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor] | None, mask: Tensor, cache: Cache | None
    ) -> Tensor:
        if self.pre_norm:
            x = x + self.attn(self.attn_norm(x), rope, mask, cache)
            return x + self.mlp(self.mlp_norm(x))
        x = self.attn_norm(x + self.attn(x, rope, mask, cache))
        return self.mlp_norm(x + self.mlp(x))


class LumenLMPreTrainedModel(PreTrainedModel):
    """Weight initialisation and the flags transformers reads."""

    config_class = LumenLMConfig
    base_model_prefix = "lumenlm"
    _no_split_modules = ["LumenLMBlock"]  # noqa: RUF012 (transformers API)
    _supports_cache_class = True

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, (nn.LayerNorm, LumenLMRMSNorm)):
            nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)


class LumenLMForCausalLM(LumenLMPreTrainedModel, GenerationMixin):
    """lumenlm's decoder-only Transformer with its LM head."""

    _tied_weights_keys = {"lm_head.weight": "tok_emb.weight"} if _V5 else ["lm_head.weight"]

    def __init__(self, config: LumenLMConfig) -> None:
        super().__init__(config)
        cfg = config
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = (
            nn.Embedding(cfg.context_length, cfg.d_model) if cfg.positions == "learned" else None
        )
        self.emb_dropout = nn.Dropout(cfg.embd_dropout)
        self.blocks = nn.ModuleList(LumenLMBlock(cfg, i) for i in range(cfg.n_layers))
        self.final_norm = _norm(cfg) if cfg.pre_norm else nn.Identity()
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.lm_head_bias)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.tok_emb

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.tok_emb = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: Cache | None = None,
        cache: Cache | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs: object,
    ) -> CausalLMOutputWithPast:
        """Logits for `input_ids` (B, T); with `labels`, the mean next-token loss."""
        cfg = self.config
        past_key_values = cache if cache is not None else past_key_values
        x = self.tok_emb(input_ids) if inputs_embeds is None else inputs_embeds
        B, T = x.shape[:2]
        use_cache = cfg.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        S = past + T
        if position_ids is None:
            if attention_mask is not None:
                pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
                position_ids = pos[:, past:S]
            else:
                position_ids = torch.arange(past, S, device=x.device).expand(B, T)
        rope = None
        if self.pos_emb is not None:
            if int(position_ids.max()) >= cfg.context_length:
                raise ValueError(
                    f"position {int(position_ids.max())} is past the learned position table "
                    f"(context_length={cfg.context_length}); crop the input"
                )
            x = x + self.pos_emb(position_ids)
        else:
            rope = _rope(position_ids, cfg.d_head, cfg.rope_theta, x.dtype)
        x = self.emb_dropout(x)

        q_pos = torch.arange(past, S, device=x.device)[:, None]
        k_pos = torch.arange(S, device=x.device)[None, :]
        mask = (k_pos <= q_pos)[None, None]
        if attention_mask is not None:
            keep = attention_mask[:, -S:].bool()[:, None, None, :]
            # A padding query sees no key; letting it see itself keeps softmax finite.
            mask = (mask & keep) | (k_pos == q_pos)[None, None]
        for block in self.blocks:
            x = block(x, rope, mask, past_key_values if use_cache else None)
        x = self.final_norm(x)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.lm_head(x)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.size(-1)),
                labels[:, 1:].reshape(-1),
                ignore_index=-100,
            )
        kept = {_CACHE_FIELD: past_key_values if use_cache else None}
        return CausalLMOutputWithPast(loss=loss, logits=logits, **kept)


__all__ = ["LumenLMForCausalLM", "LumenLMPreTrainedModel"]
