"""Streaming text out of token ids: UTF-8 safe deltas and stop strings that never leak.

Byte-level BPE can split one multi-byte character across tokens, so decoding a
prefix of the ids may end in U+FFFD. `IncrementalDecoder` only emits text once it
decodes cleanly and decodes a short window of recent ids each step instead of the
whole text (the vLLM / HF `TextStreamer` technique), so a step costs O(1).

`StopMatcher` holds back the tail of the text that could still become a stop
string, so a streamed client never sees part of one.

Both keep only a bounded window of what they have already released (`KEEP`), so a
stream of any length runs in constant memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

REPLACEMENT = "\ufffd"
KEEP = 4096  # released ids / characters kept before the oldest are dropped


class IncrementalDecoder:
    """Turn ids, pushed one at a time, into text deltas that are never half a character."""

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0  # start of the window re-decoded each step (a char boundary)
        self.read_offset = 0  # ids before this are already emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special)

    def push(self, token_id: int) -> str:
        """Add one id; return the newly completed text ('' while a character is split)."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith(REPLACEMENT):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            if self.prefix_offset > KEEP:  # ids before the window are never decoded again
                del self.ids[: self.prefix_offset]
                self.read_offset -= self.prefix_offset
                self.prefix_offset = 0
            return full[len(prefix) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character decodes as U+FFFD)."""
        if self.read_offset == len(self.ids):
            return ""
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix) :]


class StopMatcher:
    """Accumulate text; release only what cannot be the start of a stop string.

    `feed(delta)` returns `(text_to_emit, stopped)`. Once stopped, the text is cut
    just before the earliest stop string and nothing more is accepted.
    """

    def __init__(self, stop: Sequence[str]) -> None:
        self.stop = [s for s in stop if s]
        self.max_len = max((len(s) for s in self.stop), default=0)
        self.text = ""  # the text received (its start dropped once long; see _trim)
        self.emitted = 0  # chars of self.text already released
        self.stopped = False

    def feed(self, delta: str) -> tuple[str, bool]:
        if self.stopped or not delta:
            return "", self.stopped
        if not self.stop:
            self.text += delta
            self.emitted = len(self.text)
            self._trim()
            return delta, False
        start = max(0, len(self.text) - self.max_len + 1)  # a new match must end in `delta`
        self.text += delta
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True
            return self._release(len(self.text)), True
        # hold back the longest tail that is a proper prefix of some stop string
        safe = len(self.text)
        for j in range(max(self.emitted, len(self.text) - self.max_len + 1), len(self.text)):
            tail = self.text[j:]
            if any(s.startswith(tail) for s in self.stop):
                safe = j
                break
        out = self._release(safe)
        self._trim()
        return out, False

    def _trim(self) -> None:
        """Drop released text older than the last stop string's length: no match can
        start there any more."""
        if self.emitted > KEEP + self.max_len:
            drop = self.emitted - self.max_len
            self.text = self.text[drop:]
            self.emitted -= drop

    def finish(self) -> str:
        """Release the held-back tail (generation ended without a stop string)."""
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        out = self.text[self.emitted : upto]
        self.emitted = max(self.emitted, upto)
        return out
