"""The continuous-batching engine: one thread, B slots, one batched decode step at a time.

    engine = BatchEngine(model, tokenizer, slots=32)
    seq = engine.submit(prompt_ids, SamplingParams(max_new_tokens=64, temperature=0))
    for ev in seq:                # token by token, from the engine thread
        print(ev.text, end="")
    engine.close()

Every iteration of the engine thread (llama.cpp's slots, nano-vllm's scheduler):

1. drops sequences that were cancelled (a client disconnected) or ran past their
   deadline, freeing their slots at once;
2. admits waiting sequences into free slots: each prompt is prefilled **alone**
   (batch 1, its own temporary cache, placed into the shared `SlotCache`) and its
   first token sampled;
3. runs **one** batched decode step over every active slot (the fast step of
   `model.decode_step`, shared with `generate`; `GPT.forward` while hooks are attached),
   then samples each slot's next token with that sequence's own `SamplingParams` and
   `torch.Generator`.

Tokens go to each sequence's own queue as `Event`s (text deltas that are never half
a character and never part of a stop string, via `detok`). A slot is freed at a stop
token or string, at `max_new_tokens`, on cancel, or at the deadline.

What a sequence computes does not depend on its company: its prompt is prefilled
alone, each decode step masks out every other row's keys, its positions are its own,
and it samples from its own generator (`seed + i` for choice i, as `generate` does).
The one thing that can differ is the last bits of a float sum (a batched matmul may
use another kernel than batch 1); see docs/SERVING.md for how often that changes a
greedy token (tests/test_infer_batch_engine.py measures it).

A sequence longer than the context slides as in `engine.Decoder`: its visible window
drops to the last `context_length // 2` tokens, which are prefilled again, alone.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import torch
from torch import Tensor

from lumenlm.infer.detok import IncrementalDecoder, StopMatcher
from lumenlm.infer.engine import WHOLE_BUFFER
from lumenlm.infer.generate import EOS_TOKEN, special_id
from lumenlm.infer.sampling import (
    SamplingParams,
    logit_bias_vector,
    make_generator,
    sample_next,
)
from lumenlm.infer.sequence import Event, SequenceHandle, TokenLogprob
from lumenlm.infer.slots import SlotCache
from lumenlm.model import GPT
from lumenlm.model.decode_step import DecodeStep

MAX_TOP_LOGPROBS = 20  # OpenAI's cap on top_logprobs


class QueueFull(Exception):
    """The engine's waiting queue is full; try again later (the server answers 429)."""


class _Slot:
    """Per-sequence decoding state while it holds a slot."""

    def __init__(
        self, seq: SequenceHandle, tokenizer: Any, stop_ids: set[int], vocab: int, device: Any
    ) -> None:
        p = seq.params
        self.seq = seq
        self.window = list(seq.prompt)  # the visible window, pending token included
        self.detok = IncrementalDecoder(tokenizer) if tokenizer is not None else None
        self.matcher = StopMatcher(p.stop)
        self.stop_ids = stop_ids
        self.generated = 0
        self.seen: Tensor | None = None
        self.counts: Tensor | None = None
        if p.repetition_penalty != 1.0:
            self.seen = torch.zeros((1, vocab), dtype=torch.bool, device=device)
            self.seen[0, torch.tensor(seq.prompt, device=device)] = True
        if p.counts_tokens:
            self.counts = torch.zeros((1, vocab), dtype=torch.long, device=device)
        self.bias = logit_bias_vector(p.logit_bias, vocab, device)


class BatchEngine:
    """Owns the model, the slot cache and the engine thread (see the module docstring).

    `slots`: sequences decoded together; `max_queue`: sequences waiting for a slot
    before `submit` raises `QueueFull`; `window_keep`: tokens kept when a sequence
    slides past the context (default context_length // 2).
    """

    def __init__(
        self,
        model: GPT,
        tokenizer: Any = None,
        *,
        slots: int = 8,
        max_queue: int = 256,
        window_keep: int | None = None,
    ) -> None:
        if slots < 1 or max_queue < 0:
            raise ValueError("slots must be >= 1 and max_queue >= 0")
        self.model = model
        self.tokenizer = tokenizer if tokenizer is not None else model.tokenizer
        self.slots = slots
        self.max_queue = max_queue
        self.ctx = model.config.context_length
        self.keep = max(
            1, min(window_keep if window_keep is not None else self.ctx // 2, self.ctx - 1)
        )
        self.vocab = model.config.vocab_size
        self.device = model.tok_emb.weight.device
        self.eos = special_id(self.tokenizer, EOS_TOKEN)
        self.cache = SlotCache(model, slots, self.ctx)
        self.fast = DecodeStep(model)  # the decode step `engine.Decoder` uses too
        self.active: list[_Slot] = []  # active[r] decodes in cache row r
        self.waiting: deque[SequenceHandle] = deque()
        self._calls: deque[tuple[Callable[[], Any], Future]] = deque()
        self.steps = 0  # batched decode steps run (for tests and stats)
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="lumenlm-engine", daemon=True)
        self._thread.start()

    # -- public -----------------------------------------------------------------------
    def submit(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        *,
        seed_offset: int = 0,
        logprobs: int | None = None,
        prompt_logprobs: bool = False,
        timeout: float | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> SequenceHandle:
        """Queue one sequence; see `submit_many`."""
        [seq] = self.submit_many(
            [prompt],
            params,
            seed_offset=seed_offset,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            timeout=timeout,
            on_event=[on_event] if on_event else None,
        )
        return seq

    def submit_many(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        *,
        seed_offset: int = 0,
        logprobs: int | None = None,
        prompt_logprobs: bool = False,
        timeout: float | None = None,
        on_event: Sequence[Callable[[Event], None]] | None = None,
    ) -> list[SequenceHandle]:
        """Queue sequences together (all or none: `QueueFull` when they do not fit).

        Sequence i samples with seed `params.seed + seed_offset + i` (like row i of
        `generate`). `logprobs`: also report each token's logprob and that many top
        alternatives (0 to 20); `prompt_logprobs`: the prompt's too (set on the sequence
        before its first event); `timeout`: seconds until the sequence ends with
        finish_reason "timeout".
        """
        if logprobs is not None and not 0 <= logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {logprobs}")
        params.check_vocab(self.vocab)
        deadline = None if timeout is None else time.monotonic() + timeout
        seqs = []
        for i, prompt in enumerate(prompts):
            ids = [int(t) for t in prompt]
            if not ids:
                raise ValueError("every prompt needs at least one token")
            if any(not 0 <= t < self.vocab for t in ids):
                raise ValueError(f"token id outside the vocabulary (size {self.vocab})")
            gen = None
            if not params.greedy:
                seed = None if params.seed is None else params.seed + seed_offset + i
                gen = make_generator(seed, self.device)
            seqs.append(
                SequenceHandle(
                    ids,
                    params,
                    gen,
                    logprobs=logprobs,
                    prompt_logprobs=prompt_logprobs,
                    deadline=deadline,
                    on_event=on_event[i] if on_event else None,
                )
            )
        with self._cond:
            if self._closed:
                raise RuntimeError("the engine is closed")
            free = self.slots - len(self.active)
            if len(self.waiting) + len(seqs) > self.max_queue + max(0, free):
                raise QueueFull(f"{len(self.waiting)} sequences are waiting for a slot")
            self.waiting.extend(seqs)
            self._cond.notify()
        return seqs

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run `fn()` on the engine thread between two steps (a Future of its result):
        for other work on the same model, such as inspecting it with hooks, which must
        not run while a decode step does."""
        fut: Future = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._calls.append((fn, fut))
            self._cond.notify()
        return fut

    def stats(self) -> dict[str, int]:
        """Slots, active and waiting sequences, decode steps so far."""
        with self._cond:
            return {
                "slots": self.slots,
                "active": len(self.active),
                "waiting": len(self.waiting),
                "steps": self.steps,
            }

    def close(self) -> None:
        """Stop the thread; sequences still running or waiting end "cancelled"."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)

    # -- the engine thread --------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while (
                        not self._closed
                        and not self.waiting
                        and not self.active
                        and not self._calls
                    ):
                        self._cond.wait()
                    if self._closed:
                        break
                    admit = []
                    while self.waiting and len(self.active) + len(admit) < self.slots:
                        admit.append(self.waiting.popleft())
                    calls = list(self._calls)
                    self._calls.clear()
                for fn, fut in calls:
                    if fut.set_running_or_notify_cancel():
                        try:
                            fut.set_result(fn())
                        except Exception as exc:  # the caller's error, not the engine's
                            fut.set_exception(exc)
                if calls or admit:  # the weights may have changed since the last step
                    self.fast.refresh()  # rebuilt only when they did
                self._iteration(admit)
        except Exception as exc:  # a bug or out of memory: every sequence learns of it
            self._fail_all(f"engine failed: {type(exc).__name__}: {exc}")
            with self._cond:
                self._closed = True
            raise
        self._fail_all(None)

    def _fail_all(self, error: str | None) -> None:
        with self._cond:
            pending = [s.seq for s in self.active] + list(self.waiting)
            self.waiting.clear()
        self.active = []
        self.cache.clear()
        with self._cond:
            calls = list(self._calls)
            self._calls.clear()
        for _, fut in calls:
            fut.cancel()
        for seq in pending:
            seq._emit(Event([], "", None if error else "cancelled", error=error))

    @torch.inference_mode()
    def _iteration(self, admit: list[SequenceHandle]) -> None:
        now = time.monotonic()
        for r in range(len(self.active) - 1, -1, -1):  # from the end: removal moves the last
            seq = self.active[r].seq
            if seq.cancelled:
                self._finish(r, "cancelled", "")
            elif seq.deadline is not None and now > seq.deadline:
                self._finish(r, "timeout", "")
        for seq in admit:
            if seq.cancelled:
                seq.finish_reason = "cancelled"
                seq._emit(Event([], "", "cancelled"))
            elif seq.deadline is not None and now > seq.deadline:  # it waited too long
                seq.finish_reason = "timeout"
                seq._emit(Event([], "", "timeout"))
            else:
                self._admit(seq)
        if not self.active:
            return
        self._slide_long_rows()
        if not self.cache.room():  # cannot happen after sliding; guards the invariant
            raise RuntimeError("slot cache full after sliding")
        tokens = torch.tensor([s.window[-1] for s in self.active], device=self.device)
        self.cache.begin_step()
        if not self.fast.usable():
            mask, pos = self.cache.step_inputs()  # hooks see every activation: GPT.forward
            out = self.model(
                tokens.view(-1, 1),
                cache=self.cache,
                attention_mask=mask,
                position_ids=pos,
                last_only=True,
            )
            logits = out.logits[:, -1]
        else:
            c, a = self.cache, self.cache.active
            keys = None if c.max_length <= WHOLE_BUFFER else c.length + 1
            logits = self.fast(tokens, c.pos[:a], c.col, c.keys[:a], c.k[:, :a], c.v[:, :a], keys)
            c.length += 1
        self.cache.advance()
        self.steps += 1
        self._sample_all(logits)

    def _admit(self, seq: SequenceHandle) -> None:
        slot = _Slot(seq, self.tokenizer, self._stop_ids(seq.params), self.vocab, self.device)
        if seq.params.max_new_tokens == 0:
            if seq.want_prompt_logprobs:
                seq.prompt_logprobs = self._prompt_logprobs(seq.prompt[-self.ctx :], seq.logprobs)
            seq._emit(Event([], "", "length"))
            return
        slot.window = slot.window[-self.ctx :]
        logits = self._prefill_into(len(self.active), slot.window, slot)
        self.active.append(slot)
        self._sample_rows([len(self.active) - 1], logits[None])

    def _prefill_into(self, row: int, window: list[int], slot: _Slot) -> Tensor:
        """Prefill `window` alone, place its keys/values in cache `row`; next-token logits."""
        tmp = self.model.new_cache(1, len(window))
        ids = torch.tensor([window], device=self.device)
        echo = slot.seq.want_prompt_logprobs and slot.seq.prompt_logprobs is None
        out = self.model(ids, cache=tmp, last_only=not echo)
        if echo:
            slot.seq.prompt_logprobs = self._logprobs_of(out.logits[0], window, slot.seq.logprobs)
        self.cache.place(row, tmp.k[:, :, :, : len(window)], tmp.v[:, :, :, : len(window)])
        return out.logits[0, -1]

    def _prompt_logprobs(self, window: list[int], top: int | None) -> list[TokenLogprob | None]:
        out = self.model(torch.tensor([window], device=self.device))
        return self._logprobs_of(out.logits[0], window, top)

    @staticmethod
    def _logprobs_of(logits: Tensor, ids: list[int], top: int | None) -> list[TokenLogprob | None]:
        """Logprob of ids[j] given ids[:j] for j >= 1 (None for the first token)."""
        lp = torch.log_softmax(logits[:-1].float(), dim=-1)
        nxt = torch.tensor(ids[1:], device=lp.device)
        chosen = lp.gather(-1, nxt[:, None])[:, 0].tolist()
        k = top or 0
        tv, ti = lp.topk(k, dim=-1) if k else (None, None)
        rows: list[TokenLogprob | None] = [None]
        for j, (t, c) in enumerate(zip(ids[1:], chosen)):
            alts = list(zip(ti[j].tolist(), tv[j].tolist())) if k else []  # type: ignore[index]
            rows.append(TokenLogprob(t, c, alts))
        return rows

    def _slide_long_rows(self) -> None:
        for r, slot in enumerate(self.active):
            if len(slot.window) > self.ctx:
                slot.window = slot.window[-self.keep :]
                # the last token is the step's input; the rest is prefilled again, alone
                head = slot.window[:-1]
                if head:
                    tmp = self.model.new_cache(1, len(head))
                    self.model(torch.tensor([head], device=self.device), cache=tmp, last_only=True)
                    self.cache.place(r, tmp.k[:, :, :, : len(head)], tmp.v[:, :, :, : len(head)])
                else:
                    self.cache.clear_row(r)

    def _stop_ids(self, p: SamplingParams) -> set[int]:
        ids = {int(t) for t in p.stop_token_ids}
        eos = p.eos_token_id if p.eos_token_id is not None else self.eos
        if eos is not None and not p.ignore_eos:
            ids.add(int(eos))
        return ids

    # -- sampling ---------------------------------------------------------------------------
    def _sample_all(self, logits: Tensor) -> None:
        self._sample_rows(list(range(len(self.active))), logits)

    def _sample_rows(self, rows: list[int], logits: Tensor) -> None:
        """Sample the next token of cache rows `rows` (logits (len(rows), V)); emit, finish."""
        chosen: dict[int, int] = {}
        groups: dict[tuple, list[int]] = {}  # rows whose processors are the same batch op
        for j, r in enumerate(rows):
            s = self.active[r]
            p = s.seq.params
            if s.seen is None and s.counts is None and not p.logit_bias:
                key = ("greedy",) if p.greedy else (p.temperature, p.top_k, p.top_p, p.min_p)
                groups.setdefault(key, []).append(j)
            else:  # its own penalties: alone
                chosen[j] = int(
                    sample_next(logits[j : j + 1], p, [s.seq.generator], s.seen, s.counts, s.bias)[
                        0
                    ]
                )
        for key, js in groups.items():
            if key == ("greedy",):
                picks = logits[js].float().argmax(dim=-1).tolist()
            else:
                p = self.active[rows[js[0]]].seq.params
                gens = [self.active[rows[j]].seq.generator for j in js]
                picks = sample_next(logits[js], p, gens).tolist()  # type: ignore[arg-type]
            chosen.update(zip(js, picks))
        finished: list[tuple[int, str, str]] = []
        for j, r in enumerate(rows):
            reason = self._emit_token(self.active[r], chosen[j], logits[j])
            if reason is not None:
                finished.append((r, *reason))
        for r, why, text, lps in sorted(finished, reverse=True, key=lambda f: f[0]):
            self._finish(r, why, text, lps)

    def _emit_token(
        self, slot: _Slot, t: int, logits: Tensor
    ) -> tuple[str, str, list[TokenLogprob] | None] | None:
        """Deliver token `t`; at the end returns (finish reason, text to send with it,
        logprobs of a stop token: it is not output, but scored, as vLLM reports it)."""
        seq = slot.seq
        lps = None
        if seq.logprobs is not None:
            lp = torch.log_softmax(logits.float(), dim=-1)
            top = lp.topk(seq.logprobs) if seq.logprobs else None
            alts = list(zip(top.indices.tolist(), top.values.tolist())) if top else []
            lps = [TokenLogprob(t, float(lp[t]), alts)]
        slot.generated += 1
        last = slot.generated >= seq.params.max_new_tokens
        if t in slot.stop_ids:
            return "stop", self._flush(slot), lps
        seq.completion_tokens += 1
        text, stopped = ("", False)
        if slot.detok is not None:
            text, stopped = slot.matcher.feed(slot.detok.push(t))
        if slot.seen is not None:
            slot.seen[0, t] = True
        if slot.counts is not None:
            slot.counts[0, t] += 1
        slot.window.append(t)
        if stopped:
            seq._emit(Event([t], text, None, lps))
            return "stop", "", None
        if last:
            text += self._flush(slot)
            seq._emit(Event([t], text, None, lps))
            return ("stop" if slot.matcher.stopped else "length"), "", None
        seq._emit(Event([t], text, None, lps))
        return None

    @staticmethod
    def _flush(slot: _Slot) -> str:
        if slot.detok is None:
            return ""
        text, stopped = slot.matcher.feed(slot.detok.flush())
        return text if stopped else text + slot.matcher.finish()

    def _finish(
        self, row: int, reason: str, text: str, logprobs: list[TokenLogprob] | None = None
    ) -> None:
        slot = self.active[row]
        slot.seq.finish_reason = reason
        slot.seq._emit(Event([], text, reason, logprobs))
        moved = self.cache.remove(row)
        if moved is not None:
            self.active[row] = self.active[moved]
        self.active.pop()
