"""The KV cache of the continuous-batching engine: B slots over one right-aligned buffer.

Continuous batching needs sequences of different lengths to decode together and to
come and go between steps. `GPT.forward` writes one step's keys at the same columns
for every row of a cache (`[length, length + T)`), so the rows are kept
**right-aligned**: every active row's tokens end at the shared column `end`, row r
holding its `n_r` cached tokens at `[end - n_r, end)`. One decode step feeds one token
per row; its attention mask marks each row's own columns and its position id is `n_r`,
so what a row attends to and where it is does not depend on its neighbours.

- `place(r, k, v)` puts a prefilled sequence (its own B=1 cache) into row r, shifting
  the whole buffer right first when the prompt is longer than `end`;
- `compact()` shifts everything left by the room the longest row leaves, when `end`
  reaches the capacity;
- `remove(r)` frees a row by moving the last active row into it, so the active rows are
  always `0 .. active - 1` and a step computes nothing for free slots.

Besides the keys and values it keeps, preallocated and updated in place, what the fast
decode step (`model.decode_step.DecodeStep`, shared with `engine.Decoder`) reads: an
additive key mask per row (0 on the row's own columns, -inf elsewhere), each row's next
position, and the write column. The object also quacks like `model.KVCache` (`length`,
`max_length`, `update`), which is all `GPT.forward` uses, so a step can go through the
plain forward (while hooks are attached) on the same buffers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lumenlm.model import GPT


class SlotCache:
    """Keys/values of up to `slots` sequences, right-aligned at column `length`."""

    def __init__(self, model: GPT, slots: int, capacity: int) -> None:
        cfg = model.config
        p = model.tok_emb.weight
        assert cfg.n_kv_heads is not None and cfg.d_head is not None and cfg.d_value is not None
        self.k = torch.zeros(
            (cfg.n_layers, slots, cfg.n_kv_heads, capacity, cfg.d_head),
            dtype=p.dtype,
            device=p.device,
        )
        self.v = torch.zeros(
            (cfg.n_layers, slots, cfg.n_kv_heads, capacity, cfg.d_value),
            dtype=p.dtype,
            device=p.device,
        )
        self.max_length = capacity
        self.length = 0  # the shared end column ("end" in the module docstring)
        self.lengths: list[int] = []  # n_r of each active row, rows 0 .. active - 1
        # what the fast decode step reads (see the module docstring)
        self.keys = torch.full((slots, capacity), float("-inf"), dtype=p.dtype, device=p.device)
        self.pos = torch.zeros(slots, dtype=torch.long, device=p.device)
        self.col = torch.zeros(1, dtype=torch.long, device=p.device)

    @property
    def active(self) -> int:
        return len(self.lengths)

    # -- what GPT.forward calls ------------------------------------------------------
    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store one step's keys/values of the active rows; return theirs so far."""
        a, start, end = self.active, self.length, self.length + k.shape[2]
        self.k[layer, :a, :, start:end] = k
        self.v[layer, :a, :, start:end] = v
        return self.k[layer, :a, :, :end], self.v[layer, :a, :, :end]

    # -- slot bookkeeping ---------------------------------------------------------------
    def begin_step(self) -> None:
        """Before a decode step: every active row may attend to the new column `length`,
        where the step writes."""
        self.keys[: self.active, self.length] = 0.0
        self.col.fill_(self.length)

    def step_inputs(self) -> tuple[Tensor, Tensor]:
        """(attention_mask (A, end + 1), position_ids (A, 1)) for one decode step through
        `GPT.forward` (after `begin_step`)."""
        a, end = self.active, self.length
        return (self.keys[:a, : end + 1] == 0).long(), self.pos[:a].view(-1, 1)

    def advance(self) -> None:
        """After a decode step: every active row holds one more token."""
        self.lengths = [n + 1 for n in self.lengths]
        self.pos[: self.active] += 1

    def clear(self) -> None:
        """Free every row."""
        self.lengths = []
        self.length = 0
        self.keys.fill_(float("-inf"))

    def clear_row(self, row: int) -> None:
        """Keep active `row` with no cached tokens (its window is its next input only)."""
        self.lengths[row] = 0
        self.pos[row] = 0
        self.keys[row] = float("-inf")

    def place(self, row: int, k: Tensor, v: Tensor) -> None:
        """Put a prefilled sequence's keys/values (L, 1, H, P, D) in `row` (an active row
        being replaced, or `active` to append one)."""
        p = k.shape[3]
        if p > self.max_length:
            raise ValueError(f"{p} cached tokens do not fit a cache of {self.max_length}")
        if p > self.length:
            self._shift(p - self.length)
        end = self.length
        self.k[:, row, :, : end - p] = 0
        self.v[:, row, :, : end - p] = 0
        self.k[:, row, :, end - p : end] = k[:, 0]
        self.v[:, row, :, end - p : end] = v[:, 0]
        self.keys[row] = float("-inf")
        self.keys[row, end - p : end] = 0.0
        self.pos[row] = p
        if row == self.active:
            self.lengths.append(p)
        else:
            self.lengths[row] = p

    def remove(self, row: int) -> int | None:
        """Free `row`; the last active row moves into it. Returns the moved row's old
        index (None when `row` was the last)."""
        last = self.active - 1
        moved = None
        if row != last:
            self.k[:, row] = self.k[:, last]
            self.v[:, row] = self.v[:, last]
            self.keys[row] = self.keys[last]
            self.pos[row] = self.pos[last]
            self.lengths[row] = self.lengths[last]
            moved = last
        self.keys[last] = float("-inf")
        self.lengths.pop()
        if not self.lengths:
            self.length = 0
        return moved

    def room(self) -> bool:
        """Whether one more decode step fits; compacts the buffer when it must."""
        if self.length < self.max_length:
            return True
        longest = max(self.lengths, default=0)
        if longest >= self.max_length:
            return False
        self._shift(longest - self.length)
        return True

    def _shift(self, by: int) -> None:
        """Move every active row's tokens `by` columns (right if > 0, left if < 0)."""
        a, end = self.active, self.length
        if by > 0:
            start = end - max(self.lengths, default=0)
            self.k[:, :a, :, start + by : end + by] = self.k[:, :a, :, start:end].clone()
            self.v[:, :a, :, start + by : end + by] = self.v[:, :a, :, start:end].clone()
        elif by < 0:
            start = -by
            self.k[:, :a, :, : end - start] = self.k[:, :a, :, start:end].clone()
            self.v[:, :a, :, : end - start] = self.v[:, :a, :, start:end].clone()
        self.length = end + by
        # rare (a longer prompt arrives, or the buffer is full): rebuild the key mask
        self.keys[:a] = float("-inf")
        for r, n in enumerate(self.lengths):
            self.keys[r, self.length - n : self.length] = 0.0
