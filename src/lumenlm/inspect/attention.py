"""Attention maps: every layer's and head's attention pattern on one text (one PNG grid,
rows = layers, columns = heads, token labels on the axes when they fit)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lumenlm.inspect.plots import pyplot
from lumenlm.inspect.text import Encoded, encode_text, label, rounded
from lumenlm.modelio import save_figure


@torch.inference_mode()
def compute(model: Any, enc: Encoded, top_k: int = 5) -> dict[str, Any]:
    """Patterns (layer, head, query, key) and each head's mean attention entropy (nats)."""
    _, cache = model.run_with_cache(enc.tensor(model), names_filter=lambda n: "hook_pattern" in n)
    pats = torch.stack([cache["pattern", i][0].float() for i in range(model.config.n_layers)])
    entropy = -(pats.clamp_min(1e-12).log() * pats).sum(-1).mean(-1)  # (L, H)
    return {
        **enc.meta(),
        "n_layers": pats.shape[0],
        "n_heads": pats.shape[1],
        "patterns": rounded(pats, 4),
        "entropy": rounded(entropy, 4),
    }


def attention_maps(model: Any, tokenizer: Any, text: str) -> dict[str, Any]:
    """JSON-able attention patterns of `model` on `text`: keys tokens, ids, notice,
    n_layers, n_heads, patterns[layer][head][query][key], entropy[layer][head]."""
    return compute(model, encode_text(model, tokenizer, text))


def write(data: dict[str, Any], out: Path) -> list[Path]:
    """attention.png: the grid of patterns."""
    plt = pyplot()
    n_layers, n_heads, tokens = data["n_layers"], data["n_heads"], data["tokens"]
    T = len(tokens)
    size = max(2.5, min(6.0, 0.13 * T))
    font = max(3.0, min(7.0, 160 / T))
    fig, axes = plt.subplots(
        n_layers, n_heads, figsize=(size * n_heads + 1, size * n_layers + 1), squeeze=False
    )
    labels = [label(t) for t in tokens]
    for layer in range(n_layers):
        for head in range(n_heads):
            ax = axes[layer][head]
            ax.imshow(data["patterns"][layer][head], cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"L{layer} H{head}", fontsize=9)
            # Token labels on the outer axes: keys below the last row, queries left.
            if layer == n_layers - 1 and T <= 96:
                ax.set_xticks(range(T), labels, rotation=90, fontsize=font)
            else:
                ax.set_xticks([])
            if head == 0 and T <= 96:
                ax.set_yticks(range(T), labels, fontsize=font)
            else:
                ax.set_yticks([])
    fig.suptitle("attention patterns (row: query token, column: key token)", fontsize=10)
    fig.tight_layout()
    path = out / "attention.png"
    save_figure(fig, path)
    plt.close(fig)
    return [path]
