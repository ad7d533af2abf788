"""One decoder-only Transformer for every preset.

Blocks are chosen by `ModelConfig` switches: LayerNorm or RMSNorm, GELU MLP or
SwiGLU, learned positions or RoPE, multi-head / grouped-query / multi-query
attention, biases, weight tying, pre- or post-norm. Names follow the Llama/HF
convention (`q_proj`, `k_proj`, ...) so export is a renaming, not a rewrite.

Two attention paths give the same logits:
- fast: `F.scaled_dot_product_attention` (flash / memory-efficient kernels);
- explicit: softmax(QK^T / sqrt(d)) V written out, used when attention
  probabilities are requested (`return_attentions=True`), e.g. for inspection.

A `KVCache` with fixed-size buffers supports incremental decoding whose logits
equal a full recompute. Left-padded batches are handled with `attention_mask`
(1 = real token, 0 = padding) and `position_ids`.

Packed training rows (several short documents or conversations in one window) pass
`document_ids`: a block-diagonal causal mask keeps each document to itself, and
positions restart at each document, so a packed row's logits equal each document's
logits alone. A boolean mask for SDPA is used rather than a variable-length
("document-aware") flash kernel because it works on every device and dtype, CPU
included, and its (B, 1, T, T) size is small at these context lengths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lumenlm.config import ModelConfig

if TYPE_CHECKING:
    from tokenizers import Tokenizer


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32 like Llama's (then cast back)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.d_model, cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.norm_bias)


# ----------------------------------------------------------------------------- RoPE


def rope_cos_sin(
    position_ids: Tensor, d_head: int, theta: float, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """cos/sin tables for `position_ids` of shape (B, T) -> each (B, 1, T, d_head).

    Uses the "rotate half" layout (first half / second half of each head pairs up),
    the same as Hugging Face Llama, so weights need no permutation on export.
    """
    inv_freq = 1.0 / (
        theta
        ** (
            torch.arange(0, d_head, 2, device=position_ids.device, dtype=torch.int64).float()
            / d_head
        )
    )
    freqs = position_ids.float()[..., None] * inv_freq  # (B, T, d_head/2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate `x` in its own dtype: under bf16 autocast q/k stay bf16 (no fp32 copies)."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + _rotate_half(x) * sin


def document_positions(document_ids: Tensor) -> Tensor:
    """Positions that restart at 0 wherever `document_ids` (B, T) changes value."""
    B, T = document_ids.shape
    t = torch.arange(T, device=document_ids.device).expand(B, T)
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    first = torch.where(starts, t, torch.zeros_like(t)).cummax(dim=1).values
    return t - first


# ----------------------------------------------------------------------------- KV cache


class KVCache:
    """Preallocated key/value buffers for all layers: no re-allocation per token.

    `length` is the number of positions already stored (shared by the batch).
    The model writes new keys/values at `[length, length + T)` and advances
    `length` after the last layer.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        batch_size: int,
        max_length: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        assert cfg.n_kv_heads is not None and cfg.d_head is not None and cfg.d_value is not None
        shape_k = (cfg.n_layers, batch_size, cfg.n_kv_heads, max_length, cfg.d_head)
        shape_v = (cfg.n_layers, batch_size, cfg.n_kv_heads, max_length, cfg.d_value)
        self.k = torch.zeros(shape_k, device=device, dtype=dtype)
        self.v = torch.zeros(shape_v, device=device, dtype=dtype)
        self.max_length = max_length
        self.length = 0

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store new keys/values for `layer`; return all keys/values so far."""
        start, end = self.length, self.length + k.shape[2]
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def reset(self) -> None:
        self.length = 0

    def reorder(self, index: Tensor) -> None:
        """Keep only batch rows `index` (e.g. drop finished sequences)."""
        self.k = self.k[:, index]
        self.v = self.v[:, index]


# ----------------------------------------------------------------------------- blocks


class Attention(nn.Module):
    """Causal self-attention with optional GQA, RoPE and KV cache."""

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        assert cfg.n_kv_heads is not None and cfg.d_head is not None and cfg.d_value is not None
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads = cfg.n_heads, cfg.n_kv_heads
        self.d_head, self.d_value = cfg.d_head, cfg.d_value
        self.n_rep = cfg.n_rep
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
        mask: Tensor | None,
        cache: KVCache | None,
        need_weights: bool,
    ) -> tuple[Tensor, Tensor | None]:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.d_head).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.d_head).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.d_value).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        # mask is None only for a full causal window (T == S) or one query over a cache.
        is_causal = mask is None and k.shape[2] == T and T > 1
        dropout_p = self.attn_dropout if self.training else 0.0
        weights = None
        # Expand K/V so query head h reads KV head h // n_rep: for the explicit path, and
        # on CUDA when there is a mask (only the flash and math kernels take enable_gqa,
        # and flash takes no mask; expanded, the memory-efficient kernel can run).
        expand = self.n_rep > 1 and (need_weights or (mask is not None and q.is_cuda))
        if expand:
            k = k.repeat_interleave(self.n_rep, dim=1)
            v = v.repeat_interleave(self.n_rep, dim=1)
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)
            if is_causal:
                causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
                scores = scores.masked_fill(~causal, float("-inf"))
            elif mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
            y = F.dropout(weights, dropout_p, self.training) @ v
        else:
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                dropout_p=dropout_p,
                is_causal=is_causal,
                enable_gqa=self.n_rep > 1 and not expand,
            )
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.d_value)
        return self.resid_dropout(self.o_proj(y)), weights


class MLP(nn.Module):
    """Feed-forward: GELU (GPT-2) or SwiGLU (gate * up, then down)."""

    def __init__(self, cfg: ModelConfig) -> None:
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


class Block(nn.Module):
    """norm -> attention -> residual, norm -> MLP -> residual (or post-norm)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.pre_norm = cfg.pre_norm
        self.attn_norm = make_norm(cfg)
        self.attn = Attention(cfg, layer_idx)
        self.mlp_norm = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None,
        mask: Tensor | None,
        cache: KVCache | None,
        need_weights: bool,
    ) -> tuple[Tensor, Tensor | None]:
        if self.pre_norm:
            a, w = self.attn(self.attn_norm(x), rope, mask, cache, need_weights)
            x = x + a
            x = x + self.mlp(self.mlp_norm(x))
        else:
            a, w = self.attn(x, rope, mask, cache, need_weights)
            x = self.attn_norm(x + a)
            x = self.mlp_norm(x + self.mlp(x))
        return x, w


# ----------------------------------------------------------------------------- model


@dataclass
class ModelOutput:
    """Logits (B, T, V), loss if targets were given, and optional internals.

    `hidden_states[i]` is the residual stream entering block i; the last entry is
    the output of the final block (before the final norm), n_layers + 1 in all.
    `attentions[i]` is block i's attention probabilities (B, n_heads, T, S).
    """

    logits: Tensor
    loss: Tensor | None = None
    hidden_states: list[Tensor] | None = None
    attentions: list[Tensor] | None = None


class GPT(nn.Module):
    """Decoder-only Transformer language model configured by `ModelConfig`.

    Besides the weights it carries what was read from its model directory: set in one
    place, `lumenlm.load()`; a model built directly keeps the empty defaults below.
    """

    tokenizer: Tokenizer | None
    """The directory's tokenizer.json, or None (saved without one, or built directly)."""
    meta: dict[str, Any]
    """The whole config.json document (chat template, provenance); {} when built directly."""
    model_dir: Path | None
    """The model directory the weights came from (a run dir resolved); None when built here."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = (
            nn.Embedding(cfg.context_length, cfg.d_model) if cfg.positions == "learned" else None
        )
        self.emb_dropout = nn.Dropout(cfg.embd_dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.final_norm = make_norm(cfg) if cfg.pre_norm else nn.Identity()
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.lm_head_bias)
        self.tokenizer = None
        self.meta = {}
        self.model_dir = None
        self.reset_parameters()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    # -- initialisation -------------------------------------------------------
    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, std) weights, zero biases, and residual output
        projections scaled by 1/sqrt(2 * n_layers) when `init == "gpt2"`."""
        cfg = self.config
        resid_std = (
            cfg.init_std / math.sqrt(2 * cfg.n_layers) if cfg.init == "gpt2" else cfg.init_std
        )
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                std = resid_std if name.endswith(("o_proj", "down_proj")) else cfg.init_std
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=cfg.init_std)
            elif isinstance(module, (nn.LayerNorm, RMSNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Unique parameters (tied weights once); optionally without embeddings."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.tok_emb.weight.numel()
            if self.pos_emb is not None:
                n -= self.pos_emb.weight.numel()
        return n

    # -- forward ----------------------------------------------------------------
    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        *,
        cache: KVCache | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        document_ids: Tensor | None = None,
        return_hidden_states: bool = False,
        return_attentions: bool = False,
        last_only: bool = False,
    ) -> ModelOutput:
        """Run the model on token ids `idx` (B, T).

        targets: (B, T) next-token ids; entries equal to `ignore_index` are skipped.
        cache: decode incrementally; `idx` holds only the new tokens.
        attention_mask: (B, S) with S = cached + new length; 0 marks padding keys.
        position_ids: (B, T) explicit positions (left padding); default counts
            from the cache length.
        document_ids: (B, T) integer ids for packed rows: a token attends only to
            earlier tokens with the same id, and positions restart at each change
            of id (unless `position_ids` is given). Not with a cache or a mask.
        last_only: compute logits for the last position only (generation).
        """
        cfg = self.config
        B, T = idx.shape
        past = cache.length if cache is not None else 0
        if cache is not None and past + T > cache.max_length:
            raise ValueError(f"KV cache holds {cache.max_length} positions; {past + T} needed")
        if document_ids is not None:
            if cache is not None or attention_mask is not None:
                raise ValueError("document_ids cannot be combined with a cache or attention_mask")
            if document_ids.shape != (B, T):
                raise ValueError(
                    f"document_ids must have shape {(B, T)}, got {tuple(document_ids.shape)}"
                )
            if position_ids is None:
                position_ids = document_positions(document_ids)
        default_positions = position_ids is None
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=idx.device).expand(B, T)
        x = self.tok_emb(idx)
        rope = None
        if self.pos_emb is not None:
            # Default positions are checked on the host: no GPU sync, no graph break under
            # torch.compile. Explicit ones (left padding) need one look at the device.
            last = past + T - 1 if default_positions or T == 0 else int(position_ids.max())
            if last >= cfg.context_length:
                raise ValueError(
                    f"position {last} is past the learned position table "
                    f"(context_length={cfg.context_length}); crop the input"
                )
            x = x + self.pos_emb(position_ids)
        else:
            rope = rope_cos_sin(position_ids, cfg.d_head, cfg.rope_theta, x.dtype)  # type: ignore[arg-type]
        x = self.emb_dropout(x)

        if document_ids is not None:
            same = document_ids[:, :, None] == document_ids[:, None, :]
            mask = (same & torch.ones(T, T, dtype=torch.bool, device=idx.device).tril())[:, None]
        else:
            mask = self._attention_mask(B, T, past, attention_mask, idx.device)
        hidden: list[Tensor] = []
        attns: list[Tensor] = []
        for block in self.blocks:
            if return_hidden_states:
                hidden.append(x)
            x, w = block(x, rope, mask, cache, return_attentions)
            if w is not None:
                attns.append(w)
        if return_hidden_states:
            hidden.append(x)
        if cache is not None:
            cache.length += T
        x = self.final_norm(x)
        if last_only:
            x = x[:, -1:]
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.float().view(-1, logits.size(-1)),
                targets.reshape(-1),
                ignore_index=cfg.ignore_index,
            )
        return ModelOutput(
            logits=logits,
            loss=loss,
            hidden_states=hidden if return_hidden_states else None,
            attentions=attns if return_attentions else None,
        )

    @staticmethod
    def _attention_mask(
        B: int, T: int, past: int, attention_mask: Tensor | None, device: torch.device
    ) -> Tensor | None:
        """Boolean (B|1, 1, T, S) mask, True = may attend; None when plain causal suffices."""
        S = past + T
        if attention_mask is None and (past == 0 or T == 1):
            return None  # SDPA's is_causal (T == S) or no mask at all (one query)
        q_pos = torch.arange(past, S, device=device)[:, None]
        k_pos = torch.arange(S, device=device)[None, :]
        mask = (k_pos <= q_pos)[None, None]  # (1, 1, T, S)
        if attention_mask is not None:
            if attention_mask.shape != (B, S):
                raise ValueError(
                    f"attention_mask must have shape {(B, S)}, got {tuple(attention_mask.shape)}"
                )
            mask = mask & attention_mask.bool()[:, None, None, :]
            # A padding query sees no key at all; let it see itself so softmax stays finite.
            mask = mask | (k_pos == q_pos)[None, None]
        return mask

    # -- convenience --------------------------------------------------------------
    def new_cache(self, batch_size: int, max_length: int | None = None) -> KVCache:
        """A KV cache on this model's device/dtype (default length: the context length)."""
        p = self.tok_emb.weight
        return KVCache(
            self.config, batch_size, max_length or self.config.context_length, p.device, p.dtype
        )
