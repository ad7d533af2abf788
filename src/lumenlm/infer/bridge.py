"""The engine's sequences seen from asyncio: one request's rows as one async event stream.

The engine thread calls each sequence's `on_event` callback; `EngineCall` posts those
to a queue on the server's event loop, so a route awaits events without a thread of its
own. Ending the call early (the client left, the stream was closed) cancels every row,
which frees their slots at the engine's next step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from lumenlm.infer.batch_engine import BatchEngine
from lumenlm.infer.sampling import SamplingParams
from lumenlm.infer.sequence import Event, SequenceHandle

POLL_S = 0.25  # how often a waiting non-streamed request checks that its client is there


class EngineCall:
    """Submit `rows` to `engine` now (`QueueFull` propagates); iterate `events()`."""

    def __init__(
        self,
        engine: BatchEngine,
        rows: Sequence[Sequence[int]],
        params: SamplingParams,
        *,
        logprobs: int | None = None,
        prompt_logprobs: bool = False,
        timeout: float | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()

        def poster(i: int) -> Callable[[Event], None]:
            def post(ev: Event) -> None:
                try:
                    loop.call_soon_threadsafe(self.queue.put_nowait, (i, ev))
                except RuntimeError:  # the loop is closed: the server is shutting down
                    pass

            return post

        self.seqs: list[SequenceHandle] = engine.submit_many(
            rows,
            params,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            timeout=timeout,
            on_event=[poster(i) for i in range(len(rows))],
        )

    def cancel(self) -> None:
        for s in self.seqs:
            s.cancel()

    async def events(
        self, poll: Callable[[], Any] | None = None
    ) -> AsyncIterator[tuple[int, Event]]:
        """(row, event) until every row has finished; cancels the rows if left early.

        `poll`: an async callable checked every `POLL_S` seconds;
        when it returns True (the client disconnected) the rows are cancelled.
        """
        left = len(self.seqs)
        loop = asyncio.get_running_loop()
        polled = loop.time()
        try:
            while left:
                if poll is not None and loop.time() - polled > POLL_S:
                    if await poll():
                        return
                    polled = loop.time()
                if poll is None:
                    item = await self.queue.get()
                else:
                    try:
                        item = await asyncio.wait_for(self.queue.get(), timeout=POLL_S)
                    except TimeoutError:
                        continue
                if item[1].finish_reason is not None or item[1].error is not None:
                    left -= 1
                yield item
        finally:
            if left:
                self.cancel()
