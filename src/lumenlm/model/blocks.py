"""The Transformer block and its two sublayers, with TransformerLens-named hook points.

Attention shapes at the hooks (TransformerLens's): `hook_q` (batch, pos, n_heads,
d_head); `hook_k`, `hook_v` (batch, pos, n_kv_heads, d_head): keys and values are shown
per *KV head*, and query head h reads KV head h // n_rep (n_rep = n_heads / n_kv_heads),
the `repeat_interleave` layout of Hugging Face Llama; `hook_rot_q`/`hook_rot_k` (RoPE
models) the same after rotation; `hook_attn_scores` and `hook_pattern` (batch, n_heads,
query pos, key pos), the scores scaled and masked (-inf) before the softmax; `hook_z`
(batch, pos, n_heads, d_value), each head's output before `o_proj`. With a KV cache the
q/k/v hooks see the new positions only, the scores and pattern every key so far.

Two attention paths give the same logits:
- fast: `F.scaled_dot_product_attention` (flash / memory-efficient kernels);
- explicit: softmax(QK^T / sqrt(d)) V written out, used when the probabilities are asked
  for (`return_attentions=True`, or a hook on `hook_attn_scores`/`hook_pattern`), and in
  CPU training with attention dropout (SDPA would run the same math there, with torch's
  slower mask; `model.dropout`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lumenlm.config import ModelConfig
from lumenlm.model.dropout import Dropout, dropout, fast_path
from lumenlm.model.hook_points import HookPoint
from lumenlm.model.kv_cache import KVCache
from lumenlm.model.norms import make_norm, norm
from lumenlm.model.positions import apply_rope


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
        self.resid_dropout = Dropout(cfg.resid_dropout)
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        if cfg.positions == "rope":
            self.hook_rot_q, self.hook_rot_k = HookPoint(), HookPoint()
        self.hook_attn_scores, self.hook_pattern = HookPoint(), HookPoint()
        self.hook_z = HookPoint()

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None,
        mask: Tensor | None,
        cache: KVCache | None,
        need_weights: bool,
        hooked: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.d_head)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.d_head)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.d_value)
        if hooked and self.hook_q.active:
            q = self.hook_q(q)
        if hooked and self.hook_k.active:
            k = self.hook_k(k)
        if hooked and self.hook_v.active:
            v = self.hook_v(v)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            if hooked and self.hook_rot_q.active:
                q = self.hook_rot_q(q.transpose(1, 2)).transpose(1, 2)
            if hooked and self.hook_rot_k.active:
                k = self.hook_rot_k(k.transpose(1, 2)).transpose(1, 2)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        # mask is None only for a full causal window (T == S) or one query over a cache.
        is_causal = mask is None and k.shape[2] == T and T > 1
        dropout_p = self.attn_dropout if self.training else 0.0
        weights = None
        if hooked:
            need_weights = need_weights or self.hook_attn_scores.active or self.hook_pattern.active
        # With attention dropout SDPA's CPU kernels fall back to this same explicit math,
        # drawing the mask with torch's slow bernoulli_; written out, it uses `dropout`.
        explicit = need_weights or (
            dropout_p > 0.0 and fast_path(q, B * self.n_heads * T * k.shape[2])
        )
        # Expand K/V so query head h reads KV head h // n_rep: for the explicit path, and
        # on CUDA when there is a mask (only the flash and math kernels take enable_gqa,
        # and flash takes no mask; expanded, the memory-efficient kernel can run).
        expand = self.n_rep > 1 and (explicit or (mask is not None and q.is_cuda))
        if expand:
            k = k.repeat_interleave(self.n_rep, dim=1)
            v = v.repeat_interleave(self.n_rep, dim=1)
        if explicit:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)
            if is_causal:
                causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
                scores = scores.masked_fill(~causal, float("-inf"))
            elif mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            if hooked and self.hook_attn_scores.active:
                scores = self.hook_attn_scores(scores)
            probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
            if hooked and self.hook_pattern.active:
                probs = self.hook_pattern(probs)
            if need_weights:
                weights = probs
            y = dropout(probs, dropout_p, self.training) @ v
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
        y = y.transpose(1, 2)
        if hooked and self.hook_z.active:
            y = self.hook_z(y)
        y = y.reshape(B, T, self.n_heads * self.d_value)
        return self.resid_dropout(self.o_proj(y)), weights


class MLP(nn.Module):
    """Feed-forward: GELU (GPT-2) or SwiGLU (gate * up, then down).

    Hooks as TransformerLens: `hook_pre` the pre-activation (SwiGLU: the gate),
    `hook_pre_linear` (SwiGLU only) the up projection, `hook_post` what enters
    `down_proj`; each (batch, pos, d_ff).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.swiglu = cfg.activation == "swiglu"
        self.approximate = "tanh" if cfg.activation == "gelu_tanh" else "none"
        if self.swiglu:
            self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.mlp_bias)
        self.dropout = Dropout(cfg.resid_dropout)
        self.hook_pre = HookPoint()
        if self.swiglu:
            self.hook_pre_linear = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, x: Tensor, hooked: bool = False) -> Tensor:
        if self.swiglu:
            gate, up = self.gate_proj(x), self.up_proj(x)
            if hooked and self.hook_pre.active:
                gate = self.hook_pre(gate)
            if hooked and self.hook_pre_linear.active:
                up = self.hook_pre_linear(up)
            h = F.silu(gate) * up
        else:
            pre = self.up_proj(x)
            if hooked and self.hook_pre.active:
                pre = self.hook_pre(pre)
            h = F.gelu(pre, approximate=self.approximate)
        if hooked and self.hook_post.active:
            h = self.hook_post(h)
        return self.dropout(self.down_proj(h))


class Block(nn.Module):
    """norm -> attention -> residual, norm -> MLP -> residual (or post-norm).

    `hook_resid_pre` enters the block, `hook_attn_out`/`hook_mlp_out` are the sublayer
    outputs added to the stream, `hook_resid_mid` is the stream between the sublayers
    and `hook_resid_post` leaves the block. In a post-norm block resid_mid and
    resid_post are taken after their norm (what the next sublayer reads).
    """

    def __init__(self, cfg: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.pre_norm = cfg.pre_norm
        self.attn_norm = make_norm(cfg)
        self.attn = Attention(cfg, layer_idx)
        self.mlp_norm = make_norm(cfg)
        self.mlp = MLP(cfg)
        self.hook_resid_pre, self.hook_resid_mid = HookPoint(), HookPoint()
        self.hook_attn_out, self.hook_mlp_out = HookPoint(), HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None,
        mask: Tensor | None,
        cache: KVCache | None,
        need_weights: bool,
        hooked: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """`hooked`: some hook is attached to the model (else no hook point is looked at)."""
        if hooked and self.hook_resid_pre.active:
            x = self.hook_resid_pre(x)
        if self.pre_norm:
            a, w = self.attn(
                norm(self.attn_norm, x, hooked), rope, mask, cache, need_weights, hooked
            )
            if hooked and self.hook_attn_out.active:
                a = self.hook_attn_out(a)
            x = x + a
            if hooked and self.hook_resid_mid.active:
                x = self.hook_resid_mid(x)
            m = self.mlp(norm(self.mlp_norm, x, hooked), hooked)
            if hooked and self.hook_mlp_out.active:
                m = self.hook_mlp_out(m)
            x = x + m
        else:
            a, w = self.attn(x, rope, mask, cache, need_weights, hooked)
            if hooked and self.hook_attn_out.active:
                a = self.hook_attn_out(a)
            x = norm(self.attn_norm, x + a, hooked)
            if hooked and self.hook_resid_mid.active:
                x = self.hook_resid_mid(x)
            m = self.mlp(x, hooked)
            if hooked and self.hook_mlp_out.active:
                m = self.hook_mlp_out(m)
            x = norm(self.mlp_norm, x + m, hooked)
        if hooked and self.hook_resid_post.active:
            x = self.hook_resid_post(x)
        return x, w
