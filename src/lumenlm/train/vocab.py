"""Growing a model's vocabulary for the special tokens a chat template needs.

A template such as "turns" marks turns with `<|user|>`, `<|assistant|>` and `<|end|>`;
each must be one token, or the model cannot emit `<|end|>` as a single stop id. Tokens
missing from the base tokenizer are added to it (at the end, as special tokens) and
the model's token embedding grows by the same rows, as does an untied output head.

New rows start at the mean of the existing rows of the same matrix (Hewitt, "Initializing
new word embeddings for pretrained language models", 2021; what `transformers`'
`resize_token_embeddings(mean_resizing=True)` does): a random row can carry a large
logit and dominate the softmax before it has been trained, the mean row predicts
roughly the average distribution. A model whose `vocab_size` already has unused padding
rows past the tokenizer reuses them (they were never trained either, so they are reset
to the mean as well), and `vocab_size` grows only if the tokenizer outgrows it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from lumenlm.config import ModelConfig


def add_special_tokens(tokenizer: Any, tokens: list[str]) -> list[str]:
    """Add the `tokens` the tokenizer lacks as special tokens; the ones added, in order."""
    missing = [t for t in dict.fromkeys(tokens) if tokenizer.token_to_id(t) is None]
    if missing:
        tokenizer.add_special_tokens(missing)
    return missing


def grow_state(
    state: dict[str, torch.Tensor],
    cfg: ModelConfig,
    new_ids: list[int],
    vocab_size: int,
    old_tokens: int,
) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """Weights and config with `vocab_size` rows (at least the old size), rows `new_ids`
    set to the mean of the first `old_tokens` rows (the ones the tokenizer used), in the
    embedding, an untied head's weight and its bias. Other rows are unchanged."""
    new_vocab = max(vocab_size, cfg.vocab_size)
    out = dict(state)
    keys = ["tok_emb.weight"]
    if not cfg.tie_embeddings:
        keys.append("lm_head.weight")
    if "lm_head.bias" in state:
        keys.append("lm_head.bias")
    for key in keys:
        old = state[key]
        grown = torch.empty((new_vocab, *old.shape[1:]), dtype=old.dtype)
        grown[: old.shape[0]] = old
        mean = old[:old_tokens].double().mean(dim=0).to(old.dtype)
        grown[old.shape[0] :] = mean
        if new_ids:
            grown[torch.tensor(new_ids, dtype=torch.long)] = mean
        out[key] = grown
    if cfg.tie_embeddings and "lm_head.weight" in state:
        out["lm_head.weight"] = out["tok_emb.weight"]
    return out, dataclasses.replace(cfg, vocab_size=new_vocab)
