"""The decode loop's model side: batched, left-padded prefill + KV-cache steps + sliding.

`Decoder` owns the "visible window" of every row (the tokens the model currently
conditions on) and turns "here is the next token of every row" into "here are the
next-token logits of every row". Two modes give the same tokens:

- `use_cache=True`: one preallocated `KVCache` (no allocation per token); each step
  feeds one token per row with `last_only=True`;
- `use_cache=False`: recompute the whole visible window every step (the reference).

Left padding: rows are right-aligned; `attention_mask` is 1 on real tokens and
`position_ids = cumsum(mask) - 1` (clamped at 0), so a row's positions do not depend
on how much padding it got. With no padding both are omitted (fast SDPA path).

Sliding window: the model never sees more than `context_length` positions. When a
row's next token would not fit, that row keeps its last `window_keep` tokens
(default `context_length // 2`) and the cache is re-filled for the batch. Sliding
per row keeps every row's output independent of what else is in the batch. Positions restart at 0,
which is what keeps learned-position models inside their table. For RoPE models the
re-basing changes nothing in principle (RoPE scores depend only on relative
distance); it is done the same way so both position schemes share one code path.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lumenlm.model import GPT


def left_pad(rows: list[list[int]], pad_id: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Right-aligned rows: (ids, attention_mask, position_ids), each (B, longest), on CPU.

    The mask is 1 on real tokens; positions count from 0 at each row's first real
    token (padding gets 0), so a row's positions do not depend on its padding.
    """
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


class Decoder:
    """Next-token logits for a batch of growing sequences (see module docstring)."""

    def __init__(
        self,
        model: GPT,
        prompts: list[list[int]],
        *,
        max_new_tokens: int,
        pad_id: int = 0,
        use_cache: bool = True,
        window_keep: int | None = None,
    ) -> None:
        ctx = model.config.context_length
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        self.model = model
        self.ctx = ctx
        self.keep = max(1, min(window_keep if window_keep is not None else ctx // 2, ctx - 1))
        self.pad_id = pad_id
        self.use_cache = use_cache
        self.device = model.tok_emb.weight.device
        self.rows = [list(p[-ctx:]) for p in prompts]  # visible windows
        self.slides = 0
        width = max(len(r) for r in self.rows)
        self.capacity = min(ctx, width + max(1, max_new_tokens))
        self.cache = model.new_cache(len(prompts), self.capacity) if use_cache else None
        self._mask_buf: Tensor | None = None
        self._pos: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return len(self.rows)

    # -- internals ---------------------------------------------------------------
    def _padded(self) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(ids, attention_mask or None, position_ids or None) for the visible windows."""
        width = max(len(r) for r in self.rows)
        if all(len(r) == width for r in self.rows):
            ids = torch.tensor(self.rows, dtype=torch.long, device=self.device)
            return ids, None, None
        ids, mask, pos = left_pad(self.rows, self.pad_id)
        return ids.to(self.device), mask.to(self.device), pos.to(self.device)

    def _prefill(self) -> Tensor:
        ids, mask, pos = self._padded()
        if self.cache is None:
            return self.model(ids, attention_mask=mask, position_ids=pos, last_only=True).logits[
                :, -1
            ]
        self.cache.reset()
        if mask is None:
            # Unpadded rows: the model's default positions (the cache length) are right
            # and are checked on the host, so no positions tensor is kept or passed.
            self._mask_buf = None
            self._pos = None
        else:
            buf = torch.ones((self.batch_size, self.capacity), dtype=torch.long, device=self.device)
            buf[:, : mask.shape[1]] = mask
            self._mask_buf = buf
            self._pos = pos[:, -1:] + 1
        out = self.model(
            ids, cache=self.cache, attention_mask=mask, position_ids=pos, last_only=True
        )
        return out.logits[:, -1]

    def _slide(self) -> None:
        # Per row, so a row's tokens never depend on its batch-mates' lengths.
        self.rows = [r[-self.keep :] if len(r) > self.ctx else r for r in self.rows]
        self.slides += 1

    # -- API -------------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self) -> Tensor:
        """Logits (B, V) for the token after each prompt."""
        return self._prefill()

    @torch.inference_mode()
    def step(self, tokens: Tensor, token_list: list[int]) -> Tensor:
        """Append one token per row (`tokens` (B,), the same as `token_list`) -> logits (B, V)."""
        for r, t in zip(self.rows, token_list):
            r.append(t)
        if any(len(r) > self.ctx for r in self.rows):
            self._slide()
            return self._prefill()
        if self.cache is None:
            return self._prefill()
        n = self.cache.length + 1
        mask = self._mask_buf[:, :n] if self._mask_buf is not None else None
        out = self.model(
            tokens.view(-1, 1),
            cache=self.cache,
            attention_mask=mask,
            position_ids=self._pos,
            last_only=True,
        )
        if self._pos is not None:
            self._pos += 1
        return out.logits[:, -1]
