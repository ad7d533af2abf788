"""The decoder-only Transformer (`GPT`) for every preset.

Blocks are chosen by `ModelConfig` switches: LayerNorm or RMSNorm, GELU MLP or
SwiGLU, learned positions or RoPE, multi-head / grouped-query / multi-query
attention, biases, weight tying, pre- or post-norm. Names follow the Llama/HF
convention (`q_proj`, `k_proj`, ...) so export is a renaming, not a rewrite.

A `KVCache` with fixed-size buffers supports incremental decoding whose logits
equal a full recompute. Left-padded batches are handled with `attention_mask`
(1 = real token, 0 = padding) and `position_ids`.

Packed training rows (several short documents or conversations in one window) pass
`document_ids`: a block-diagonal causal mask keeps each document to itself, and
positions restart at each document, so a packed row's logits equal each document's
logits alone. A boolean mask for SDPA is used rather than a variable-length
("document-aware") flash kernel because it works on every device and dtype, CPU
included, and its (B, 1, T, T) size is small at these context lengths.

Hook points (`hook_embed`, `hook_pos_embed`, `blocks.{i}.…`, `ln_final.…`) follow
TransformerLens; `GPT` inherits `run_with_hooks`/`run_with_cache` from `HookedModel`.
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
from lumenlm.model.blocks import Block
from lumenlm.model.chunked_loss import linear_cross_entropy
from lumenlm.model.dropout import Dropout
from lumenlm.model.hook_points import HookPoint
from lumenlm.model.hooked_model import HookedModel
from lumenlm.model.kv_cache import KVCache
from lumenlm.model.norms import RMSNorm, make_norm, norm
from lumenlm.model.positions import document_positions, rope_cos_sin

if TYPE_CHECKING:
    from tokenizers import Tokenizer


@dataclass
class ModelOutput:
    """Logits (B, T, V), loss if targets were given, and optional internals.

    `logits` is None only when the caller asked for no logits (`return_logits=False`):
    with targets the chunked loss never builds them; without targets `final_hidden` is
    the head's input (the final norm's output, (B, T, D)), so the caller can run the
    vocabulary projection itself, one chunk of rows at a time (chunked evaluation).

    `hidden_states[i]` is the residual stream entering block i; the last entry is
    the output of the final block (before the final norm), n_layers + 1 in all.
    `attentions[i]` is block i's attention probabilities (B, n_heads, T, S).
    """

    logits: Tensor | None
    loss: Tensor | None = None
    hidden_states: list[Tensor] | None = None
    attentions: list[Tensor] | None = None
    final_hidden: Tensor | None = None


class GPT(HookedModel):
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
        self.emb_dropout = Dropout(cfg.embd_dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.final_norm = make_norm(cfg) if cfg.pre_norm else nn.Identity()
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.lm_head_bias)
        self.hook_embed = HookPoint()
        if self.pos_emb is not None:
            self.hook_pos_embed = HookPoint()
        self.tokenizer = None
        self.meta = {}
        self.model_dir = None
        self.name_hook_points()
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
        return_logits: bool = True,
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
        return_logits: with targets, False returns the loss only (`logits=None`),
            computed by the chunked linear + cross-entropy (`model.chunked_loss`: one
            chunk of logits at a time, same loss and gradients). Under torch.compile and
            in fp16 the plain path is taken (and its logits are returned). Without
            targets, False returns `final_hidden` (the head's input) and no logits.
        return_hidden_states / return_attentions: see `ModelOutput`; the hook points
            (`run_with_cache`) give the same tensors and more, by name.
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
        hooked = self._hook_switch.count > 0  # one look: no hook point is touched otherwise
        x = self.tok_emb(idx)
        if hooked and self.hook_embed.active:
            x = self.hook_embed(x)
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
            pos = self.pos_emb(position_ids)
            if hooked and self.hook_pos_embed.active:
                pos = self.hook_pos_embed(pos)
            x = x + pos
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
            x, w = block(x, rope, mask, cache, return_attentions, hooked)
            if w is not None:
                attns.append(w)
        if return_hidden_states:
            hidden.append(x)
        if cache is not None:
            cache.length += T
        x = norm(self.final_norm, x, hooked)
        if last_only:
            x = x[:, -1:]
        if targets is None and not return_logits:
            return ModelOutput(
                logits=None,
                hidden_states=hidden if return_hidden_states else None,
                attentions=attns if return_attentions else None,
                final_hidden=x,
            )
        if targets is not None and not return_logits and self._chunked_loss_applies(x):
            loss = linear_cross_entropy(
                x, self.lm_head.weight, self.lm_head.bias, targets, ignore_index=cfg.ignore_index
            )
            return ModelOutput(
                logits=None,
                loss=loss,
                hidden_states=hidden if return_hidden_states else None,
                attentions=attns if return_attentions else None,
            )
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
    def _chunked_loss_applies(x: Tensor) -> bool:
        """Whether `return_logits=False` takes the chunked loss: not under torch.compile
        (inductor fuses the plain path itself) and not in fp16, where a GradScaler's large
        scale meets the head's gradients at another point than in the plain path, so
        overflow-skipped steps would differ from it (fp16 keeps the plain path)."""
        if torch.compiler.is_compiling():
            return False
        dev = x.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        return dtype != torch.float16

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
