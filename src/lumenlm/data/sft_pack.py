"""Conversations -> packed training rows with loss masks and document ids.

**Masks from offsets.** A conversation is rendered once with the chat template
(`ChatTemplate.segments` says which characters are trained: an assistant turn's content
and closing text, e.g. "Paris<|end|>") and tokenized once, the way `chat` tokenizes its
prompt. A token is trained when any of its characters is: byte-level BPE glues the
space after "Assistant:" to the first word of the reply (" Paris"), and that token is
the model's to produce. Targets that are not trained are set to `ignore_index`, so
`GPT.forward`'s cross-entropy skips them.

**Turn-boundary truncation.** A conversation longer than the context keeps its longest
prefix of whole turns that ends with an assistant turn and fits; one whose first reply
does not fit at all is dropped. Both are counted.

**Packing.** Conversations are laid into rows of `context_length` positions in order,
next-fit: one goes into the current row if it fits, else it starts a new row; the rest
of a row is padding (never a target). Every position carries its conversation's index
in the row (`document_ids`); `GPT.forward(document_ids=...)` turns that into a
block-diagonal causal mask and positions that restart per conversation, so a packed
conversation computes exactly what it would alone. We use the explicit block-diagonal
mask rather than a variable-length ("document-aware") attention kernel because it is
exact in plain PyTorch SDPA on every device (CPU included), and rows are at most a few
thousand positions, where the (T, T) boolean mask is cheap; the price is that SDPA
cannot take its causal fast path on packed rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lumenlm.data.chat_template import ChatTemplate
from lumenlm.data.sft import Conversation


@dataclass
class Encoded:
    """One tokenized conversation: ids, which of them are trained, and the token counts
    at which an assistant turn ends (the places it may be cut)."""

    ids: np.ndarray
    trained: np.ndarray
    turn_ends: list[int]


def encode_conversation(
    messages: Sequence[dict[str, str]],
    template: ChatTemplate,
    tokenizer: Any,
    train_on_prompt: bool = False,
) -> Encoded:
    """Render `messages` with `template`, tokenize, and mark the trained tokens."""
    segments = template.segments(messages)
    text = "".join(s.text for s in segments)
    enc = tokenizer.encode(text, add_special_tokens=False)
    return _mark(enc.ids, enc.offsets, segments, len(text), train_on_prompt)


def _mark(
    ids: Sequence[int],
    offsets: Sequence[tuple[int, int]],
    segments: Sequence[Any],
    n_chars: int,
    train_on_prompt: bool,
) -> Encoded:
    char_trained = np.zeros(n_chars + 1, dtype=bool)
    ends: list[int] = []  # character offsets where an assistant turn ends
    pos = 0
    for i, seg in enumerate(segments):
        start, pos = pos, pos + len(seg.text)
        char_trained[start:pos] = seg.trained or train_on_prompt
        last_of_message = i + 1 == len(segments) or segments[i + 1].index != seg.index
        if seg.role == "assistant" and last_of_message:
            ends.append(pos)
    starts = np.asarray([o[0] for o in offsets], dtype=np.int64)
    stops = np.asarray([o[1] for o in offsets], dtype=np.int64)
    cum = np.concatenate([[0], np.cumsum(char_trained[:n_chars])])
    trained = (cum[stops] - cum[starts]) > 0  # any trained character in the token
    turn_ends = [int(np.searchsorted(stops, c, side="right")) for c in ends]
    return Encoded(np.asarray(ids, dtype=np.int64), trained, turn_ends)


@dataclass
class PackStats:
    """What packing did, for the notice and the card."""

    conversations: int = 0
    truncated: int = 0
    dropped: int = 0
    rows: int = 0
    trained_tokens: int = 0
    tokens: int = 0
    pad_tokens: int = 0
    dropped_sources: list[str] = field(default_factory=list)

    def notice(self, split: str, context_length: int) -> str | None:
        """One line on cut or dropped conversations, or None when every one fitted."""
        if not (self.truncated or self.dropped):
            return None
        where = f" (first: {self.dropped_sources[0]})" if self.dropped_sources else ""
        return (
            f"{split}: {self.truncated} conversation(s) longer than the context "
            f"({context_length} tokens) cut at a turn boundary, {self.dropped} dropped "
            f"because even their first reply does not fit{where}"
        )


def fit_context(enc: Encoded, context_length: int) -> Encoded | None:
    """`enc` cut to its longest prefix of whole turns ending with an assistant turn that
    fits in `context_length` positions, or None if none does."""
    if len(enc.ids) <= context_length:
        return enc
    fitting = [k for k in enc.turn_ends if k <= context_length]
    if not fitting or not enc.trained[1 : fitting[-1]].any():
        return None
    k = fitting[-1]
    return Encoded(enc.ids[:k], enc.trained[:k], [e for e in enc.turn_ends if e <= k])


class PackedRows:
    """Packed rows of one split: inputs, targets (`ignore_index` where not trained) and
    document ids, each (rows, context_length); `get_batch` is the trainer's batch."""

    def __init__(self, x: np.ndarray, y: np.ndarray, doc: np.ndarray, stats: PackStats) -> None:
        self.x, self.y, self.doc, self.stats = x, y, doc, stats
        self.tokens = x.reshape(-1)  # what `check_ids` scans
        self.context_length = x.shape[1]

    def __len__(self) -> int:
        return len(self.x)

    def get_batch(
        self, indices: Sequence[int] | np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        i = np.asarray(indices, dtype=np.int64)
        return (
            torch.from_numpy(self.x[i]),
            torch.from_numpy(self.y[i]),
            torch.from_numpy(self.doc[i]),
        )


def pack(
    encoded: Sequence[Encoded],
    context_length: int,
    pad_id: int,
    ignore_index: int = -100,
    sources: Sequence[str] | None = None,
) -> PackedRows:
    """Truncate (`fit_context`) and pack conversations into rows (next-fit, in order)."""
    stats = PackStats(conversations=len(encoded))
    rows: list[list[Encoded]] = []
    used = context_length  # forces a first row
    for j, enc in enumerate(encoded):
        fitted = fit_context(enc, context_length)
        if fitted is None:
            stats.dropped += 1
            if sources is not None and len(stats.dropped_sources) < 3:
                stats.dropped_sources.append(sources[j])
            continue
        stats.truncated += fitted is not enc
        n = len(fitted.ids)
        if used + n > context_length:
            rows.append([])
            used = 0
        rows[-1].append(fitted)
        used += n
    R, T = len(rows), context_length
    x = np.full((R, T), pad_id, dtype=np.int64)
    y = np.full((R, T), ignore_index, dtype=np.int64)
    doc = np.full((R, T), -1, dtype=np.int64)
    for r, convs in enumerate(rows):
        at = 0
        for d, c in enumerate(convs):
            n = len(c.ids)
            x[r, at : at + n] = c.ids
            target = np.where(c.trained[1:], c.ids[1:], ignore_index)
            y[r, at : at + n - 1] = target
            doc[r, at : at + n] = d
            at += n
        stats.tokens += at
        stats.pad_tokens += T - at
    stats.rows = R
    stats.trained_tokens = int((y != ignore_index).sum())
    return PackedRows(x, y, doc, stats)


def pack_conversations(
    conversations: Sequence[Conversation],
    template: ChatTemplate,
    tokenizer: Any,
    context_length: int,
    pad_id: int,
    *,
    ignore_index: int = -100,
    train_on_prompt: bool = False,
) -> PackedRows:
    """Render, tokenize, mask, truncate and pack one split's conversations."""
    encoded = [
        encode_conversation(c.messages, template, tokenizer, train_on_prompt) for c in conversations
    ]
    sources = [c.source for c in conversations]
    return pack(encoded, context_length, pad_id, ignore_index, sources)
