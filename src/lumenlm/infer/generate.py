"""`generate` and `stream_generate`: sampling from a lumenlm model, batched and streamed.

    from lumenlm.infer import generate, stream_generate
    [res] = generate(model, "Once upon a time", tokenizer=tok, max_new_tokens=50,
                     temperature=0.8, top_k=50, top_p=0.9, seed=0)
    print(res.text, res.finish_reason)
    for ev in stream_generate(model, ["a", "bb"], tokenizer=tok, temperature=0):
        print(ev.index, ev.text, ev.finish_reason)

Prompts are strings (tokenized with `tokenizer`), one list of ids, or a list of
either; several prompts of different lengths run as one left-padded batch. The end
of generation is per row: max_new_tokens, EOS (default: the tokenizer's
`<|endoftext|>`), any of `stop_token_ids`, or a `stop` string. Stop tokens and stop
strings are not part of the returned text. `generate` is `stream_generate` collected,
so both give the same text for the same settings and seed.

`batch_size` bounds memory for many rows: they are decoded `batch_size` at a time
(one KV cache of that many rows), with the same tokens as one big batch, since row i
always samples with seed `seed + i`. The CLI's limits live here too: `MAX_BATCH`
rows decode together at most, and `MAX_UNSTREAMED_TOKENS` is the most new tokens
`lumenlm generate` collects before printing (streamed output has no such bound).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

from lumenlm.infer.detok import IncrementalDecoder, StopMatcher
from lumenlm.infer.engine import Decoder
from lumenlm.infer.sampling import (
    SamplingParams,
    logit_bias_vector,
    row_generators,
    sample_next,
)
from lumenlm.infer.text import check_text
from lumenlm.model import GPT

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
MAX_BATCH = 64  # rows decoded together by `lumenlm generate --batch-size`
DEFAULT_BATCH = 16  # the server's per-request row cap (schema.MAX_N) decodes in one batch
MAX_UNSTREAMED_TOKENS = 4096  # `lumenlm generate` without --stream prints only at the end

Prompt = str | Sequence[int]


@dataclass
class StreamEvent:
    """One step of one row: new ids, the text they completed, and the end reason once done."""

    index: int
    token_ids: list[int]
    text: str
    finish_reason: str | None = None  # "stop" (EOS / stop token / stop string) or "length"


@dataclass
class GenerationResult:
    """A finished row: the generated ids and text (without stop token/string)."""

    index: int
    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = "length"

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


_PARAM_NAMES = {f.name for f in fields(SamplingParams)}


def resolve_params(params: SamplingParams | None, overrides: dict[str, Any]) -> SamplingParams:
    """`params` (or the defaults) with keyword overrides; unknown names raise TypeError."""
    unknown = set(overrides) - _PARAM_NAMES
    if unknown:
        raise TypeError(f"unknown sampling setting(s): {', '.join(sorted(unknown))}")
    base = params if params is not None else SamplingParams()
    return replace(base, **overrides) if overrides else base


def special_id(tokenizer: Any, token: str) -> int | None:
    """The id of a special token, or None (also when there is no tokenizer)."""
    if tokenizer is None:
        return None
    return tokenizer.token_to_id(token)


def encode_prompts(
    prompts: Prompt | Sequence[Prompt], tokenizer: Any, vocab_size: int | None = None
) -> list[list[int]]:
    """Normalize prompts to a list of id lists (strings need a tokenizer); with
    `vocab_size`, an id outside the vocabulary is a ValueError."""
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.tolist()
    if isinstance(prompts, str) or (
        isinstance(prompts, Sequence) and prompts and isinstance(prompts[0], int)
    ):
        prompts = [prompts]  # type: ignore[list-item]
    out: list[list[int]] = []
    for i, p in enumerate(prompts):  # type: ignore[union-attr]
        if isinstance(p, str):
            if tokenizer is None:
                raise ValueError("text prompts need a tokenizer")
            ids = tokenizer.encode(check_text(p, f"prompt {i + 1}")).ids
        else:
            ids = [int(t) for t in p]
        if not ids:  # an empty prompt starts from EOS, the GPT-2 document separator
            eos = special_id(tokenizer, EOS_TOKEN)
            if eos is None:
                raise ValueError("empty prompt and no <|endoftext|> token to start from")
            ids = [eos]
        out.append(ids)
    if not out:
        raise ValueError("no prompts given")
    if vocab_size is not None:
        bad = [t for row in out for t in row if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary (size {vocab_size})")
    return out


def stream_generate(
    model: GPT,
    prompts: Prompt | Sequence[Prompt],
    params: SamplingParams | None = None,
    *,
    tokenizer: Any = None,
    use_cache: bool = True,
    window_keep: int | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    fast: bool = True,
    compile: bool = False,
    **overrides: Any,
) -> Iterator[StreamEvent]:
    """Yield `StreamEvent`s token by token; each row ends with one event carrying its reason.

    Sampling settings come from `params` and/or keywords (`max_new_tokens`,
    `temperature`, `top_k`, `top_p`, `min_p`, `repetition_penalty`, `seed`, `stop`,
    `stop_token_ids`, `eos_token_id`, `ignore_eos`). `tokenizer` defaults to
    `model.tokenizer`. `use_cache=False` recomputes the window every token (slow;
    the reference for tests). `window_keep`: tokens kept when sliding past the
    context length (default context_length // 2). Row i samples from its own RNG
    seeded with `seed + i`, so a row's tokens do not depend on its batch-mates;
    `generator` replaces those with one shared RNG. `batch_size`: decode at most
    that many rows at a time (default: all at once); rows of a later batch start
    when the earlier batch has finished. `fast=False`: every step through `GPT.forward`
    instead of the fast decode step (the reference; same tokens). `compile`: run the
    fast decode step under `torch.compile` (a cold compile of minutes on a small CPU,
    once per model and batch size; see `model.decode_step` and benchmarks/RESULTS.md).
    """
    p = resolve_params(params, overrides)
    tok = tokenizer if tokenizer is not None else model.tokenizer
    if p.stop and tok is None:
        raise ValueError("stop strings need a tokenizer")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    vocab = model.config.vocab_size
    p.check_vocab(vocab)
    ids = encode_prompts(prompts, tok, vocab)
    step = len(ids) if batch_size is None else batch_size
    for start in range(0, len(ids), step):
        q = p if p.seed is None or start == 0 else replace(p, seed=p.seed + start)
        for ev in _stream_rows(
            model,
            ids[start : start + step],
            q,
            tok,
            use_cache,
            window_keep,
            generator,
            fast,
            compile,
        ):
            ev.index += start
            yield ev


def _stream_rows(
    model: GPT,
    ids: list[list[int]],
    p: SamplingParams,
    tok: Any,
    use_cache: bool,
    window_keep: int | None,
    generator: torch.Generator | None,
    fast: bool = True,
    compile: bool = False,
) -> Iterator[StreamEvent]:
    """`stream_generate` for one batch of encoded rows (indices from 0)."""
    vocab = model.config.vocab_size
    B = len(ids)
    if p.max_new_tokens == 0:
        for i in range(B):
            yield StreamEvent(i, [], "", "length")
        return

    stop_ids = set(int(t) for t in p.stop_token_ids)
    eos = p.eos_token_id if p.eos_token_id is not None else special_id(tok, EOS_TOKEN)
    if eos is not None and not p.ignore_eos:
        stop_ids.add(int(eos))
    pad = special_id(tok, PAD_TOKEN)
    pad = pad if pad is not None else (eos if eos is not None else 0)

    dec = Decoder(
        model,
        ids,
        max_new_tokens=p.max_new_tokens,
        pad_id=pad,
        use_cache=use_cache,
        window_keep=window_keep,
        fast=fast,
        compile=compile,
    )
    device = dec.device
    gen: Any = generator
    if gen is None and not p.greedy:
        gen = row_generators(p.seed, B, device)
    seen = None
    if p.repetition_penalty != 1.0:
        seen = torch.zeros((B, vocab), dtype=torch.bool, device=device)
        for i, row in enumerate(ids):
            seen[i, torch.tensor(row, device=device)] = True
    counts = None  # generated-token counts, for the presence/frequency penalties
    if p.counts_tokens:
        counts = torch.zeros((B, vocab), dtype=torch.long, device=device)
    bias = logit_bias_vector(p.logit_bias, vocab, device)
    detoks = [IncrementalDecoder(tok) if tok is not None else None for _ in range(B)]
    matchers = [StopMatcher(p.stop) for _ in range(B)]
    done = [False] * B
    n_done = 0
    pad_t = torch.tensor(pad, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)

    logits = dec.prefill()
    for step in range(p.max_new_tokens):
        nxt = sample_next(logits, p, gen, seen, counts, bias)
        if n_done:
            nxt = torch.where(finished, pad_t, nxt)
        toks = nxt.tolist()
        last = step == p.max_new_tokens - 1
        for i, t in enumerate(toks):
            if done[i]:
                continue
            reason = None
            if t in stop_ids:  # release text held back for a stop string that never came
                text, reason, new_ids = _flush(detoks[i], matchers[i]), "stop", []
            else:
                new_ids = [t]
                text, stopped = _text_for(detoks[i], matchers[i], t)
                if stopped:
                    reason = "stop"
            if reason is None and last:
                reason = "length"
                text += _flush(detoks[i], matchers[i])
                if matchers[i].stopped:
                    reason = "stop"
            if reason is not None:
                done[i] = True
                n_done += 1
                finished[i] = True
            if text or new_ids or reason:
                yield StreamEvent(i, new_ids, text, reason)
        if n_done == B or last:
            return
        if seen is not None:
            seen.scatter_(1, nxt.view(-1, 1), True)
        if counts is not None:
            counts.scatter_add_(1, nxt.view(-1, 1), torch.ones_like(nxt).view(-1, 1))
        logits = dec.step(nxt, toks)


def _text_for(
    detok: IncrementalDecoder | None, matcher: StopMatcher, token: int
) -> tuple[str, bool]:
    if detok is None:
        return "", False
    return matcher.feed(detok.push(token))


def _flush(detok: IncrementalDecoder | None, matcher: StopMatcher) -> str:
    if detok is None:
        return ""
    text, stopped = matcher.feed(detok.flush())
    return text if stopped else text + matcher.finish()


def generate(
    model: GPT,
    prompts: Prompt | Sequence[Prompt],
    params: SamplingParams | None = None,
    *,
    tokenizer: Any = None,
    should_stop: Callable[[], bool] | None = None,
    **options: Any,
) -> list[GenerationResult]:
    """Generate for one or more prompts; one `GenerationResult` per prompt, in order.

    Same arguments as `stream_generate`, which this collects: `options` (`use_cache`,
    `window_keep`, `generator` and the sampling keywords) go to it as they are. Plus
    `should_stop`: a callable checked after every token; when it returns True
    generation ends early (the server uses it to drop work for clients that went away).
    """
    tok = tokenizer if tokenizer is not None else model.tokenizer
    ids = encode_prompts(prompts, tok)
    results = [GenerationResult(i, row) for i, row in enumerate(ids)]
    texts: list[list[str]] = [[] for _ in ids]
    for ev in stream_generate(model, ids, params, tokenizer=tok, **options):
        if should_stop is not None and should_stop():
            break
        r = results[ev.index]
        r.token_ids.extend(ev.token_ids)
        texts[ev.index].append(ev.text)
        if ev.finish_reason is not None:
            r.finish_reason = ev.finish_reason
    for r, parts in zip(results, texts):
        r.text = "".join(parts)
    return results
