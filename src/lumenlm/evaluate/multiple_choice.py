"""Zero-shot multiple-choice scoring by log-likelihood, as lm-evaluation-harness does it.

For each choice the request is (context, " " + choice). Tokens come from lm-eval's
`_encode_pair`: trailing spaces of the context move to the continuation, then
``whole = encode(context + continuation)``, ``ctx = encode(context)``,
``cont = whole[len(ctx):]``. The model sees ``(ctx + cont)[-(L + 1):][:-1]`` (L = the
model's context length) and the score is the sum of log-softmax over the continuation
tokens. ``acc`` takes the argmax of the sums, ``acc_norm`` the argmax of the sums divided
by the choice's length in characters (without the delimiter, as lm-eval's `len(choice)`);
ties go to the first choice (numpy argmax).

Speed: the choices of one question share the same context tokens, so the context runs
once (batched over questions, left-padded) into a KV cache, and only the continuations
run per choice. Items whose request would be truncated fall back to lm-eval's layout,
one full row per choice. Either way the model returns its final hidden states and the
vocabulary projection runs only at the positions that are scored (`_scores_at`): the
continuation tokens, never the context or the padding, and `HEAD_ROWS` rows at a time,
so the (rows, positions, V) logits of a batch never exist. For a model whose context
window is mostly prompt (a 64-token Lumiere on ARC) that is most of the head's work.
A non-finite log-likelihood (nan/inf logits) is an error: an argmax over nan would still
pick a "prediction" and report a plausible accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lumenlm.errors import LumenError
from lumenlm.evaluate.tasks import MCItem
from lumenlm.infer.engine import left_pad
from lumenlm.model import GPT

Encode = Callable[[str], list[int]]
TARGET_DELIMITER = " "


def tokenizer_encoder(tokenizer: Any) -> Encode:
    """`encode(text) -> ids` without special tokens, for a `tokenizers.Tokenizer`
    (byte-level BPE) or a transformers tokenizer."""
    if hasattr(tokenizer, "encode") and hasattr(tokenizer, "get_vocab_size"):
        return lambda text: tokenizer.encode(text, add_special_tokens=False).ids
    return lambda text: list(tokenizer.encode(text, add_special_tokens=False))


def encode_pair(encode: Encode, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's `TemplateLM._encode_pair` for causal models."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = encode(context + continuation)
    ctx = encode(context)
    return ctx, whole[len(ctx) :]


@dataclass
class EncodedItem:
    """An item's context tokens and one continuation token list per choice."""

    item: MCItem
    context: list[int]
    continuations: list[list[int]]

    def fits(self, max_length: int) -> bool:
        """True when no choice needs left truncation (so the context can be shared)."""
        longest = max(len(c) for c in self.continuations)
        return len(self.context) >= 1 and len(self.context) + longest - 1 <= max_length


def encode_item(encode: Encode, item: MCItem) -> EncodedItem:
    ctx: list[int] | None = None
    conts = []
    for choice in item.choices:
        c, cont = encode_pair(encode, item.context, TARGET_DELIMITER + choice)
        ctx = c if ctx is None else ctx
        if not cont:
            raise ValueError(f"item {item.id}: choice {choice!r} encodes to no tokens")
        conts.append(cont)
    assert ctx is not None
    return EncodedItem(item, ctx, conts)


# ----------------------------------------------------------------------------- scoring


def _padded(seqs: Sequence[Sequence[int]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (N, width) ids and a bool mask of the real entries."""
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    valid = torch.zeros(len(seqs), width, dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        valid[i, : len(s)] = True
    return ids, valid


HEAD_ROWS = 512
"""Scored positions per vocabulary projection in `_scores_at`: one chunk of logits (512 x
V floats: 64 MB at lumenbase's 32000) exists at a time."""


def _token_scores(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position log-prob of `targets` (log-softmax in float32, as lm-eval) and
    whether each target is the argmax (lm-eval's is_greedy: the first of equal maxima).
    logits (..., V), targets (...)."""
    logprobs = F.log_softmax(logits.float(), dim=-1)
    lp = logprobs.gather(-1, targets[..., None]).squeeze(-1)
    return lp, logprobs.argmax(-1) == targets


def _hidden(model: GPT, ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """The final hidden states (the head's input) of `model` on `ids`."""
    h = model(ids, return_logits=False, **kwargs).final_hidden
    assert h is not None  # return_logits=False without targets always sets it
    return h


def _scores_at(
    model: GPT, h: torch.Tensor, valid: torch.Tensor, pos: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-prob and all-greedy of each row's scored targets, running the head only
    at the scored positions.

    h: (N, L, D) final hidden states; valid: (N, W) which of a row's W target slots are
    real; pos: (N, W) the position of `h` whose output predicts slot (n, w); targets:
    (N, W). The real slots are gathered row by row (the order of `valid.nonzero()`),
    projected `HEAD_ROWS` at a time, and put back in place, so each row's sum runs over
    the same numbers in the same order as over full logits.
    """
    rows, cols = valid.nonzero(as_tuple=True)
    picked = h[rows, pos[rows, cols]]  # (n, D)
    wanted = targets[rows, cols]
    lp = torch.zeros(valid.shape, dtype=torch.float32, device=h.device)
    hit = torch.ones(valid.shape, dtype=torch.bool, device=h.device)
    parts = [
        _token_scores(model.lm_head(picked[s : s + HEAD_ROWS]), wanted[s : s + HEAD_ROWS])
        for s in range(0, picked.shape[0], HEAD_ROWS)
    ]
    if parts:
        lp[rows, cols] = torch.cat([p[0] for p in parts])
        hit[rows, cols] = torch.cat([p[1] for p in parts])
    return lp.sum(-1), hit.all(-1)


@torch.no_grad()
def score_naive(
    model: GPT,
    requests: Sequence[tuple[list[int], list[int]]],
    max_length: int | None = None,
) -> list[tuple[float, bool]]:
    """lm-eval's layout: one right-padded row per (context, continuation) request.

    Row = ``(ctx + cont)[-(max_length + 1):][:-1]``; the continuation's log-probs are
    read at positions ``inplen - len(cont) .. inplen - 1``.
    """
    max_length = max_length or model.config.context_length
    device = model.tok_emb.weight.device
    rows = [(ctx + cont)[-(max_length + 1) :][:-1] for ctx, cont in requests]
    # a continuation longer than the window (lm-eval refuses those) keeps its last tokens
    conts = [cont[-max_length:] for _, cont in requests]
    batch, _ = _padded(rows, max(len(r) for r in rows))
    h = _hidden(model, batch.to(device))
    width = max(len(c) for c in conts)
    targets, valid = _padded(conts, width)
    start = torch.tensor([len(r) - len(c) for r, c in zip(rows, conts)])
    pos = (start[:, None] + torch.arange(width)[None, :]).clamp(max=batch.shape[1] - 1)
    ll, greedy = _scores_at(model, h, valid.to(device), pos.to(device), targets.to(device))
    return list(zip(ll.tolist(), greedy.tolist()))


@torch.no_grad()
def score_shared(model: GPT, items: Sequence[EncodedItem]) -> list[list[tuple[float, bool]]]:
    """Score all choices of `items`, running each context once.

    Pass 1: contexts left-padded into one batch, written to a KV cache; the last
    position's log-probs score every choice's first token. Pass 2: the cache rows are
    repeated once per choice and the continuations (minus their last token) run
    right-padded on top, giving the log-probs of the remaining continuation tokens.
    Every item must `fit` the model's context length.
    """
    device = model.tok_emb.weight.device
    cfg = model.config
    k = len(items)
    ctx_lens = torch.tensor([len(e.context) for e in items])
    c_max = int(ctx_lens.max())
    ctx, ctx_mask, pos = left_pad([list(e.context) for e in items])
    owner = torch.tensor([i for i, e in enumerate(items) for _ in e.continuations])
    conts = [cont for e in items for cont in e.continuations]
    tail = max(len(c) for c in conts) - 1  # continuation tokens fed as input
    cache = model.new_cache(k, c_max + tail)
    last = _hidden(
        model,
        ctx.to(device),
        cache=cache,
        attention_mask=ctx_mask.to(device),
        position_ids=pos.to(device),
        last_only=True,
    )[:, 0]  # (k, D): the head runs once per question, not once per choice
    logprobs = F.log_softmax(model.lm_head(last).float(), dim=-1)
    own = owner.to(device)
    firsts = torch.tensor([c[0] for c in conts], device=device)
    ll = logprobs[own, firsts]
    greedy = logprobs.argmax(-1)[own] == firsts

    if tail > 0:
        cache.reorder(own)
        inp, valid = _padded([c[:-1] for c in conts], tail)
        targets, _ = _padded([c[1:] for c in conts], tail)
        mask = torch.cat([ctx_mask[owner], torch.ones(len(conts), tail, dtype=torch.long)], 1)
        cont_pos = (ctx_lens[owner][:, None] + torch.arange(tail)[None, :]).clamp(
            max=cfg.context_length - 1
        )  # padding only; real positions fit (see `fits`)
        h = _hidden(
            model,
            inp.to(device),
            cache=cache,
            attention_mask=mask.to(device),
            position_ids=cont_pos.to(device),
        )
        at = torch.arange(tail, device=device).expand(len(conts), tail)  # slot w: position w
        rest_ll, rest_greedy = _scores_at(model, h, valid.to(device), at, targets.to(device))
        ll, greedy = ll + rest_ll, greedy & rest_greedy

    out: list[list[tuple[float, bool]]] = [[] for _ in items]
    for i, score, g in zip(owner.tolist(), ll.tolist(), greedy.tolist()):
        out[i].append((score, g))
    return out


# ----------------------------------------------------------------------------- task loop


@dataclass
class ItemResult:
    """Per-question outcome: log-likelihoods, predictions and correctness."""

    id: str
    gold: int
    loglikelihoods: list[float]
    is_greedy: list[bool]
    pred: int
    pred_norm: int
    choice_chars: list[int]
    truncated: bool = False  # context + a choice exceeded the window: cut from the left
    overlong: bool = False  # a choice alone exceeded the window: scored on its last tokens

    @property
    def acc(self) -> float:
        return float(self.pred == self.gold)

    @property
    def acc_norm(self) -> float:
        return float(self.pred_norm == self.gold)


@dataclass
class TaskResult:
    """Accuracy of one task with lm-eval's standard errors (std of the mean)."""

    task: str
    total: int
    correct: int
    correct_norm: int
    acc: float
    acc_stderr: float
    acc_norm: float
    acc_norm_stderr: float
    items: list[ItemResult] = field(default_factory=list, repr=False)
    source: str = ""  # the task file that was read
    truncated: int = 0  # questions cut from the left to fit the window (lm-eval does the same)
    overlong: int = 0  # questions with a choice longer than the window (lm-eval refuses these)


def mean_stderr(values: Sequence[float]) -> float:
    """lm-eval's `mean_stderr`: sample standard deviation / sqrt(n) (nan for n < 2)."""
    n = len(values)
    if n < 2:
        return float("nan")
    mu = sum(values) / n
    return math.sqrt(sum((x - mu) ** 2 for x in values) / (n - 1)) / math.sqrt(n)


def item_result(item: MCItem, scores: list[tuple[float, bool]]) -> ItemResult:
    lls = np.array([s for s, _ in scores])
    if not np.isfinite(lls).all():
        raise LumenError(
            f"question {item.id}: a choice's log-likelihood is {lls[~np.isfinite(lls)][0]}: "
            "the model gives non-finite logits; check the checkpoint (corrupt weights?) or "
            "evaluate with --dtype fp32"
        )
    chars = [len(c) for c in item.choices]
    return ItemResult(
        item.id,
        item.gold,
        [float(x) for x in lls],
        [g for _, g in scores],
        int(np.argmax(lls)),
        int(np.argmax(lls / np.array(chars, dtype=float))),
        chars,
    )


def aggregate(task: str, results: list[ItemResult]) -> TaskResult:
    accs = [r.acc for r in results]
    norms = [r.acc_norm for r in results]
    n = len(results)
    return TaskResult(
        task,
        n,
        int(sum(accs)),
        int(sum(norms)),
        sum(accs) / n,
        mean_stderr(accs),
        sum(norms) / n,
        mean_stderr(norms),
        results,
        truncated=sum(r.truncated for r in results),
        overlong=sum(r.overlong for r in results),
    )


def score_items(
    model: GPT,
    encode: Encode,
    items: Sequence[MCItem],
    batch_size: int = 16,
    shared: bool = True,
    progress: bool | None = None,
    desc: str = "score",
) -> list[ItemResult]:
    """Score every item (batches of `batch_size` items, longest first); results in input order.

    shared=False scores each choice as its own full row (lm-eval's layout), for checks
    and benchmarks; the numbers are the same up to float rounding.
    """
    max_length = model.config.context_length
    encoded = [encode_item(encode, it) for it in items]
    results = []
    for e, scores in zip(
        encoded, score_encoded(model, encoded, batch_size, shared, progress, desc)
    ):
        r = item_result(e.item, scores)
        r.truncated = not e.fits(max_length)
        r.overlong = max(map(len, e.continuations)) > max_length
        results.append(r)
    return results


def score_encoded(
    model: GPT,
    encoded: Sequence[EncodedItem],
    batch_size: int = 16,
    shared: bool = True,
    progress: bool | None = None,
    desc: str = "score",
) -> list[list[tuple[float, bool]]]:
    """(log-likelihood, is_greedy) of every continuation of every encoded item, in order.

    The batching behind `score_items`, for callers that encode requests themselves (the
    lm-eval `LM` adapter): items are batched `batch_size` at a time, longest first, so
    the same items give the same numbers bit for bit whoever calls.
    """
    from tqdm import tqdm

    max_length = model.config.context_length
    order = sorted(
        range(len(encoded)),
        key=lambda i: -(len(encoded[i].context) + max(map(len, encoded[i].continuations))),
    )
    results: list[list[tuple[float, bool]] | None] = [None] * len(encoded)
    disable = None if progress is None else not progress  # None: only on a terminal
    with tqdm(total=len(encoded), desc=desc, unit="q", disable=disable, leave=False) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            share = [i for i in idx if shared and encoded[i].fits(max_length)]
            full = [i for i in idx if i not in share]
            if share:
                for i, scores in zip(share, score_shared(model, [encoded[i] for i in share])):
                    results[i] = scores
            if full:
                reqs = [(encoded[i].context, c) for i in full for c in encoded[i].continuations]
                flat = score_naive(model, reqs, max_length)
                pos = 0
                for i in full:
                    n = len(encoded[i].continuations)
                    results[i] = flat[pos : pos + n]
                    pos += n
            bar.update(len(idx))
    return [r for r in results if r is not None]
