"""Positions: rotary embeddings (RoPE) and the restart-at-each-document positions of
packed rows. Pure functions of tensors, shared by the model and its tests."""

from __future__ import annotations

import torch
from torch import Tensor


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
