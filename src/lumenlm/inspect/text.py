"""The text an analysis runs on: token ids cropped to the context, with a notice, and the
token labels the pictures and pages show. Shared by every analysis."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lumenlm.errors import ConfigError, LumenError


@dataclass(frozen=True)
class Encoded:
    """Token ids of one text and their labels; `notice` says when it was cropped."""

    ids: list[int]
    tokens: list[str]
    notice: str | None = None

    def tensor(self, model: Any) -> torch.Tensor:
        """The ids as a (1, T) tensor on `model`'s device."""
        return torch.tensor([self.ids], device=model.tok_emb.weight.device)

    def meta(self) -> dict[str, Any]:
        """What every analysis's JSON repeats about its input."""
        return {"tokens": self.tokens, "ids": self.ids, "notice": self.notice}


def tokenizer_of(model: Any, tokenizer: Any = None) -> Any:
    """`tokenizer`, else the model directory's; LumenError when there is none."""
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tok is None:
        raise LumenError("the model has no tokenizer.json; pass a model directory that has one")
    return tok


def encode_text(model: Any, tokenizer: Any, text: str) -> Encoded:
    """Encode `text`; longer than the context, it keeps the first context_length tokens
    and says so in `notice` (the CLI prints it)."""
    tok = tokenizer_of(model, tokenizer)
    ids = tok.encode(text, add_special_tokens=False).ids
    if not ids:
        raise LumenError("--text encodes to no tokens; give some text")
    ctx = model.config.context_length
    notice = None
    if len(ids) > ctx:
        notice = (
            f"the text is {len(ids)} tokens, longer than the context ({ctx}); kept the first {ctx}"
        )
        ids = ids[:ctx]
    return Encoded(ids=ids, tokens=[tok.decode([i]) for i in ids], notice=notice)


def label(token: str) -> str:
    """A token as a plot label: whitespace made visible."""
    return token.replace("\n", "\\n").replace("\t", "\\t") or "∅"


def check_top_k(top_k: int, vocab_size: int) -> None:
    """The analyses list 1..vocab_size tokens per position (one-line ConfigError)."""
    if not 1 <= top_k <= vocab_size:
        raise ConfigError(
            f"--top-k must be between 1 and the vocabulary size {vocab_size}, got {top_k}"
        )


def top_tokens(logprobs: torch.Tensor, tokenizer: Any, k: int) -> list[list[dict[str, Any]]]:
    """Per row of `logprobs` (T, V): the k likeliest tokens with their probabilities."""
    top = logprobs.float().topk(k, dim=-1)
    return [
        [
            {"token": tokenizer.decode([int(i)]), "id": int(i), "prob": round(float(v.exp()), 5)}
            for v, i in zip(vals, idx)
        ]
        for vals, idx in zip(top.values, top.indices)
    ]


def rounded(t: torch.Tensor, digits: int = 5) -> Any:
    """A tensor as nested lists of rounded floats (JSON-able, small)."""
    return torch.round(t.detach().double().cpu(), decimals=digits).tolist()
