"""The decode loop's model side: batched, left-padded prefill + KV-cache steps + sliding.

`Decoder` owns the "visible window" of every row (the tokens the model currently
conditions on) and turns "here is the next token of every row" into "here are the
next-token logits of every row". Two modes give the same tokens:

- `use_cache=True`: one preallocated `KVCache`; the prompt is prefilled by
  `GPT.forward`, then each step feeds one token per row through the fast decode step
  (`model.decode_step.DecodeStep`, the one the server's `BatchEngine` uses too), with
  the key mask, positions and write column kept in preallocated tensors updated in
  place. While a hook is attached (or the model trains) a step goes through
  `GPT.forward` on the same cache instead, so hooks see every activation;
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
from lumenlm.model.decode_step import DecodeStep

NEG_INF = float("-inf")
WHOLE_BUFFER = 256
"""Caches of at most this many positions are attended whole under the mask each step
(three slicing ops fewer per layer); longer ones only up to the last written column."""


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
    """Next-token logits for a batch of growing sequences (see module docstring).

    `fast=False` sends every step through `GPT.forward` (the reference the fast step is
    tested and benchmarked against). `compile=True` compiles the fast step
    (`model.decode_step`); its cache is then sized to a power of two (at most the context
    length) so that generations of nearby lengths reuse one compiled step.
    """

    def __init__(
        self,
        model: GPT,
        prompts: list[list[int]],
        *,
        max_new_tokens: int,
        pad_id: int = 0,
        use_cache: bool = True,
        window_keep: int | None = None,
        fast: bool = True,
        compile: bool = False,
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
        if compile:
            self.capacity = min(ctx, 1 << (self.capacity - 1).bit_length())
        self.cache = model.new_cache(len(prompts), self.capacity) if use_cache else None
        self.fast = DecodeStep(model, compile=compile) if use_cache and fast else None
        B = len(prompts)
        # Preallocated per-step state, updated in place: which cache columns each row may
        # attend to (an additive mask, 0 or -inf: SDPA's cheaper kind on CPU), each row's
        # next position, and the column the next token goes to.
        dtype = model.tok_emb.weight.dtype
        self._keys = torch.full((B, self.capacity), NEG_INF, dtype=dtype, device=self.device)
        self._keys4 = self._keys[:, None, None]  # the (B, 1, 1, S) view SDPA reads
        self._pos = torch.zeros(B, dtype=torch.long, device=self.device)
        self._col = torch.zeros(1, dtype=torch.long, device=self.device)
        self._col_rows = self._col.expand(B)  # every row's position when none is padded
        self._padded = False

    @property
    def batch_size(self) -> int:
        return len(self.rows)

    # -- internals ---------------------------------------------------------------
    def _padded_inputs(self) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(ids, attention_mask or None, position_ids or None) for the visible windows."""
        width = max(len(r) for r in self.rows)
        if all(len(r) == width for r in self.rows):
            ids = torch.tensor(self.rows, dtype=torch.long, device=self.device)
            return ids, None, None
        ids, mask, pos = left_pad(self.rows, self.pad_id)
        return ids.to(self.device), mask.to(self.device), pos.to(self.device)

    def _prefill(self) -> Tensor:
        ids, mask, pos = self._padded_inputs()
        if self.cache is None:
            return self.model(ids, attention_mask=mask, position_ids=pos, last_only=True).logits[
                :, -1
            ]
        self.cache.reset()
        if self.fast is not None:
            self.fast.refresh()
        width = ids.shape[1]
        self._padded = mask is not None
        self._keys.fill_(NEG_INF)
        if mask is None:
            self._keys[:, :width] = 0.0
            self._pos.fill_(width)
        else:
            self._keys[:, :width].masked_fill_(mask.bool(), 0.0)
            self._pos.copy_(pos[:, -1] + 1)
        self._col.fill_(width)
        out = self.model(
            ids, cache=self.cache, attention_mask=mask, position_ids=pos, last_only=True
        )
        return out.logits[:, -1]

    def _slide(self) -> None:
        # Per row, so a row's tokens never depend on its batch-mates' lengths.
        self.rows = [r[-self.keep :] if len(r) > self.ctx else r for r in self.rows]
        self.slides += 1

    def _step(self, tokens: Tensor) -> Tensor:
        """One cached step: the fast step, or `GPT.forward` with `fast=False`, while
        hooks are attached (they must see every activation) or in training mode."""
        cache, n = self.cache, self.cache.length  # type: ignore[union-attr]
        self._keys.index_fill_(1, self._col, 0.0)  # the new column (== n)
        if self.fast is None or not self.fast.usable():
            out = self.model(
                tokens.view(-1, 1),
                cache=cache,
                attention_mask=self._keys[:, : n + 1] == 0 if self._padded else None,
                position_ids=self._pos.view(-1, 1) if self._padded else None,
                last_only=True,
            )
            logits = out.logits[:, -1]
        else:
            assert cache is not None
            # a short buffer is read whole (masked): fewer ops per token than slicing it
            keys = None if self.fast.compile or self.capacity <= WHOLE_BUFFER else n + 1
            pos = self._pos if self._padded else self._col_rows  # unpadded: position == column
            logits = self.fast(tokens, pos, self._col, self._keys4, cache.k, cache.v, keys)
            cache.length += 1
        if self._padded:
            self._pos += 1
        self._col += 1
        return logits

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
        return self._step(tokens)
