"""Induction-head score, the standard test (Olsson et al. 2022; TransformerLens's
tutorials): on a random token sequence repeated twice, an induction head attending from
a token of the repeat to the token that followed that token's first occurrence
(`seq_len - 1` positions back) completes the pattern. The score is a head's mean
attention on that stripe over the repeat; 1.0 is a perfect induction head, a random
model scores about 1/position. Text-independent: it makes its own input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lumenlm.errors import ConfigError
from lumenlm.inspect.plots import heatmap
from lumenlm.inspect.text import rounded


def _special_ids(tokenizer: Any) -> set[int]:
    if tokenizer is None:
        return set()
    try:
        return {int(i) for i in tokenizer.get_added_tokens_decoder()}
    except AttributeError:
        return set()


@torch.inference_mode()
def induction_scores(
    model: Any, tokenizer: Any = None, seq_len: int = 50, batch: int = 4, seed: int = 0
) -> dict[str, Any]:
    """JSON-able induction scores: scores[layer][head], and the mean loss on the first
    and the repeated half (a model with induction heads has a much lower second)."""
    ctx = model.config.context_length
    seq_len = min(seq_len, ctx // 2)
    if seq_len < 2:
        raise ConfigError(f"the context ({ctx}) is too short for an induction test")
    special = _special_ids(tokenizer if tokenizer is not None else model.tokenizer)
    pool = torch.tensor([i for i in range(model.config.vocab_size) if i not in special])
    g = torch.Generator().manual_seed(seed)
    half = pool[torch.randint(len(pool), (batch, seq_len), generator=g)]
    x = torch.cat([half, half], dim=1).to(model.tok_emb.weight.device)
    logits, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_pattern"))
    scores = torch.stack(
        [
            cache["pattern", i]
            .float()
            .diagonal(offset=-(seq_len - 1), dim1=-2, dim2=-1)[..., 1:]
            .mean((0, -1))
            for i in range(model.config.n_layers)
        ]
    )  # (L, H)
    loss = F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        x[:, 1:].reshape(-1),
        reduction="none",
    ).view(batch, -1)
    return {
        "seq_len": seq_len,
        "batch": batch,
        "seed": seed,
        "scores": rounded(scores, 4),
        "loss_first_half": round(float(loss[:, : seq_len - 1].mean()), 4),
        "loss_repeat": round(float(loss[:, seq_len:].mean()), 4),
    }


def write(data: dict[str, Any], out: Path) -> list[Path]:
    """induction.png: the layer x head heat map of scores."""
    path = out / "induction.png"
    title = (
        f"induction score: {data['seq_len']} random tokens, repeated\n"
        f"loss {data['loss_first_half']:.2f} on the first copy, {data['loss_repeat']:.2f} "
        "on the repeat"
    )
    heatmap(
        data["scores"],
        path,
        title,
        "head",
        "layer",
        cmap="viridis",
        vmin=0,
        vmax=1,
        colorbar="attention on the stripe",
    )
    return [path]
