"""OpenAI response bodies: choices, logprobs, usage and server-sent events, for the server.

Pure functions from what the engine produced to the JSON OpenAI's clients parse, kept
apart from the routes so each shape is written once (a non-streamed choice and a
streamed chunk share their logprobs builders).

Logprobs are the model's own log-probabilities (log-softmax of its logits, before
temperature, penalties or filters), as vLLM reports them by default. A token's text is
`tokenizer.decode([id])`; a token that is part of a multi-byte character decodes to
U+FFFD alone, and its `bytes` (chat) are those of that text. Completions'
`text_offset` counts characters of those token texts from the start of the returned
text (the prompt's when `echo` is on).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from lumenlm.infer.sequence import TokenLogprob


def sse(obj: Any) -> str:
    """One server-sent event carrying `obj` as JSON."""
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


DONE = "data: [DONE]\n\n"


def sse_error(message: str, type_: str = "server_error") -> str:
    """An error reported in-band, once a stream has started."""
    return sse({"error": {"message": message, "type": type_, "param": None, "code": None}})


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def response_base(model: str, prefix: str, obj: str, **extra: Any) -> Callable[[list], dict]:
    """`base(choices)`: one response's body (or chunk) around `choices`, with the fields
    every body and chunk of that response shares, in OpenAI's order."""
    head = {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": obj,
        "created": int(time.time()),
        "model": model,
        **extra,
    }
    return lambda choices: {**head, "choices": choices}


class TokenText:
    """Token id -> its text, cached (the same ids recur in every response)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        s = self._cache.get(token_id)
        if s is None:
            s = self.tokenizer.decode([token_id], skip_special_tokens=False)
            if len(self._cache) < 1_000_000:
                self._cache[token_id] = s
        return s


def completion_logprobs(
    entries: Sequence[TokenLogprob | None], text: TokenText, offset: int = 0
) -> dict[str, list]:
    """Completions' `logprobs` object for these tokens (None: a prompt's first token,
    which has no logprob); `offset`: the text offset of the first token."""
    tokens, lps, tops, offsets = [], [], [], []
    for e in entries:
        if e is None:
            continue
        s = text(e.token_id)
        tokens.append(s)
        lps.append(e.logprob)
        tops.append({text(t): lp for t, lp in e.top} if e.top else None)
        offsets.append(offset)
        offset += len(s)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def echo_logprobs(
    prompt: Sequence[int], entries: Sequence[TokenLogprob | None], text: TokenText
) -> dict[str, list]:
    """Completions' `logprobs` for an echoed prompt: the first token has `None`s."""
    body = completion_logprobs(entries, text)
    if prompt:
        first = text(prompt[0])
        body["tokens"].insert(0, first)
        body["token_logprobs"].insert(0, None)
        body["top_logprobs"].insert(0, None)
        body["text_offset"] = [0] + [o + len(first) for o in body["text_offset"]]
    return body


def merge_completion_logprobs(a: dict[str, list], b: dict[str, list]) -> dict[str, list]:
    """`a` followed by `b` (b's offsets continue after a's last token)."""
    start = (a["text_offset"][-1] + len(a["tokens"][-1])) if a["tokens"] else 0
    return {
        "tokens": a["tokens"] + b["tokens"],
        "token_logprobs": a["token_logprobs"] + b["token_logprobs"],
        "top_logprobs": a["top_logprobs"] + b["top_logprobs"],
        "text_offset": a["text_offset"] + [start + o for o in b["text_offset"]],
    }


def chat_logprobs(
    entries: Sequence[TokenLogprob], text: TokenText, top: int
) -> dict[str, list[dict]]:
    """Chat's `logprobs` object: `content`, one entry per token with `top` alternatives."""

    def item(t: int, lp: float) -> dict[str, Any]:
        s = text(t)
        return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))}

    return {
        "content": [
            {**item(e.token_id, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top[:top]]}
            for e in entries
        ],
        "refusal": None,
    }
