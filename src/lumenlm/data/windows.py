"""Training datasets over token streams, and the order an epoch walks them in.

`WindowDataset` cuts fixed windows (stride = context length by default, i.e.
non-overlapping; Lumiere uses stride 8). `PackedDataset` starts every row at the
end-of-text token before a document (or the stream start), so rows begin at document
boundaries and their first target is a document's first token. `epoch_permutation`
is the shuffle of one epoch, derived from (seed, epoch) only, so a resumed or sharded
run walks the same order (the trainer's batch order, `lumenlm.train.data`, uses it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lumenlm.errors import DataError


def _check_tokens(tokens: np.ndarray, context_length: int) -> None:
    if context_length < 1:
        raise DataError(f"context length must be at least 1, got {context_length}")
    if tokens.ndim != 1:
        raise DataError(f"token array must be 1-D, got shape {tokens.shape}")


def _gather(
    tokens: np.ndarray, starts: np.ndarray, context_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows tokens[s : s + context_length + 1] for each start s, split into (x, y) int64."""
    if starts.size == 0:
        empty = torch.empty((0, context_length), dtype=torch.int64)
        return empty, empty.clone()
    if starts.size == 1:
        s = int(starts[0])
        rows = np.asarray(tokens[s : s + context_length + 1], dtype=np.int64)[None, :]
    else:
        offsets = np.arange(context_length + 1, dtype=np.int64)
        rows = np.asarray(tokens[starts[:, None] + offsets[None, :]], dtype=np.int64)
    t = torch.from_numpy(rows)
    return t[:, :-1].contiguous(), t[:, 1:].contiguous()


class WindowDataset:
    """Windows x = tokens[s : s+T], y = tokens[s+1 : s+T+1] at s = 0, stride, 2*stride, ...

    `stride=None` means stride = context_length (non-overlapping windows). Every
    window has a full target, so the last start is at most len(tokens) - T - 1.
    """

    def __init__(self, tokens: np.ndarray, context_length: int, stride: int | None = None) -> None:
        _check_tokens(tokens, context_length)
        self.tokens = tokens
        self.context_length = context_length
        self.stride = context_length if stride is None else int(stride)
        if self.stride < 1:
            raise DataError(f"stride must be at least 1, got {stride}")
        usable = len(tokens) - context_length - 1
        self._n = usable // self.stride + 1 if usable >= 0 else 0

    def __len__(self) -> int:
        return self._n

    def start(self, i: int) -> int:
        if not -self._n <= i < self._n:
            raise IndexError(f"window {i} out of range for {self._n} windows")
        return (i % self._n) * self.stride

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = _gather(self.tokens, np.array([self.start(i)]), self.context_length)
        return x[0], y[0]

    def get_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stacked (x, y) of shape (len(indices), T), gathered in one numpy call."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self._n):
            raise IndexError(f"window index out of range for {self._n} windows")
        return _gather(self.tokens, idx * self.stride, self.context_length)


class PackedDataset:
    """Rows that each start at a document boundary: at the end-of-text token that
    precedes a document (so the row's first target is the document's first token), or
    at the stream start.

    Rows are chosen greedily without overlap: the next row starts at the first
    boundary at or after the end of the previous row, and may run on into following
    documents. Text of a document beyond the end of its row (when the document is
    longer than the context) is not a target of any row; `coverage` says how much of
    the stream is. Use `WindowDataset` when every token must be covered.
    """

    def __init__(self, tokens: np.ndarray, context_length: int, eot_id: int) -> None:
        _check_tokens(tokens, context_length)
        self.tokens = tokens
        self.context_length = context_length
        self.eot_id = int(eot_id)
        self.documents = 0  # end-of-text tokens seen (set by _row_starts)
        self.starts = self._row_starts()

    def _row_starts(self) -> np.ndarray:
        n = len(self.tokens)
        last = n - self.context_length - 1  # a row needs T + 1 tokens
        boundaries = [np.zeros(1, dtype=np.int64)]
        block = 1 << 24  # scan in blocks so a memmap is never loaded whole
        for lo in range(0, n, block):
            hits = np.flatnonzero(np.asarray(self.tokens[lo : lo + block]) == self.eot_id)
            self.documents += len(hits)
            boundaries.append(hits.astype(np.int64) + lo)  # the row starts at the EOT
        if last < 0:
            return np.zeros(0, dtype=np.int64)
        doc_starts = np.unique(np.concatenate(boundaries))
        doc_starts = doc_starts[doc_starts <= last]
        starts: list[int] = []
        next_free = 0
        # greedy: jump to the first boundary >= the end of the previous row
        i = 0
        while i < len(doc_starts):
            s = int(doc_starts[i])
            starts.append(s)
            next_free = s + self.context_length
            i = int(np.searchsorted(doc_starts, next_free, side="left"))
        return np.asarray(starts, dtype=np.int64)

    @property
    def coverage(self) -> float:
        """Fraction of the stream's possible targets that some row predicts."""
        return len(self.starts) * self.context_length / max(len(self.tokens) - 1, 1)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = _gather(self.tokens, self.starts[[i]], self.context_length)
        return x[0], y[0]

    def get_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return _gather(
            self.tokens, self.starts[np.asarray(indices, dtype=np.int64)], self.context_length
        )


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of `n` windows in `epoch`: depends on (seed, epoch) only, so any run,
    resumed or not, on any number of processes, walks the same order."""
    return np.random.default_rng([seed, epoch]).permutation(n)
