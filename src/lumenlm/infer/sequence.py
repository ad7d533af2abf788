"""What the batch engine hands out: a handle per submitted sequence and its events.

Kept apart from the engine so that the server's bridge and response shapes depend only
on these small types, and the engine module holds only the scheduling and decoding.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from lumenlm.infer.sampling import SamplingParams


@dataclass
class TokenLogprob:
    """One token's log-probability under the model (before any sampling processor) and
    the `top` most likely tokens at that position, as (id, logprob)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Event:
    """What one step of one sequence produced.

    `token_ids`: the new ids (empty for a stop token, which is not output); `text`: the
    text they completed; `finish_reason`: "stop", "length", "cancelled" or "timeout" on
    the last event; `logprobs`: one entry per id when asked for; `error`: set when the
    engine failed (the sequence is over).
    """

    token_ids: list[int]
    text: str
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] | None = None
    error: str | None = None


class SequenceHandle:
    """A submitted sequence: iterate it for its `Event`s, or `cancel()` it.

    With `on_event` the events go to that callable (called on the engine thread; the
    server posts them to its event loop) instead of the built-in queue.
    """

    def __init__(
        self,
        prompt: list[int],
        params: SamplingParams,
        generator: torch.Generator | None,
        *,
        logprobs: int | None,
        prompt_logprobs: bool,
        deadline: float | None,
        on_event: Callable[[Event], None] | None,
    ) -> None:
        self.prompt = prompt
        self.params = params
        self.generator = generator
        self.logprobs = logprobs
        self.want_prompt_logprobs = prompt_logprobs
        self.deadline = deadline
        self.prompt_logprobs: list[TokenLogprob | None] | None = None  # set before event 1
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self._queue: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._emit = on_event or self._queue.put
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop generating; the slot is freed at the engine's next step."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def __iter__(self) -> Iterator[Event]:
        while True:
            ev = self._queue.get()
            yield ev
            if ev.finish_reason is not None or ev.error is not None:
                return

    def collect(self) -> tuple[list[int], str, str]:
        """Wait for the end: (token ids, text, finish reason)."""
        ids: list[int] = []
        parts: list[str] = []
        reason = ""
        for ev in self:
            if ev.error is not None:
                raise RuntimeError(ev.error)
            ids += ev.token_ids
            parts.append(ev.text)
            reason = ev.finish_reason or reason
        return ids, "".join(parts), reason
