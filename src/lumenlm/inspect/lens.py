"""The logit lens: the residual stream before each layer (and after the last) decoded
through the final norm and the unembedding, showing the prediction form layer by layer.
The last row is exactly the model's output distribution."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lumenlm.inspect.plots import pyplot
from lumenlm.inspect.text import Encoded, encode_text, label, rounded, tokenizer_of, top_tokens
from lumenlm.modelio import atomic_write_text, save_figure


def _row_label(name: str) -> str:
    return (
        "embed"
        if name == "0_pre"
        else ("final" if name == "final_post" else f"after L{int(name.split('_')[0]) - 1}")
    )


@torch.inference_mode()
def compute(model: Any, enc: Encoded, top_k: int = 5, tokenizer: Any = None) -> dict[str, Any]:
    """Top-k tokens per layer and position, and log p(actual next token) per layer."""
    tok = tokenizer_of(model, tokenizer)
    last = f"blocks.{model.config.n_layers - 1}.hook_resid_post"
    names = [f"blocks.{i}.hook_resid_pre" for i in range(model.config.n_layers)] + [last]
    _, cache = model.run_with_cache(enc.tensor(model), names_filter=names)
    logp, labels = cache.logit_lens(return_labels=True)  # (n, 1, T, V)
    logp = logp[:, 0]
    nxt = torch.tensor(enc.ids[1:], device=logp.device)
    next_lp = logp[:, :-1].gather(-1, nxt.expand(logp.shape[0], -1)[..., None])[..., 0]
    return {
        **enc.meta(),
        "layers": [_row_label(n) for n in labels],
        "top": [top_tokens(lp, tok, top_k) for lp in logp],
        "next_token_logprob": rounded(next_lp, 4),
    }


def logit_lens(model: Any, tokenizer: Any, text: str, top_k: int = 5) -> dict[str, Any]:
    """JSON-able logit lens of `model` on `text`: layers (row names), top[layer][pos]
    (k tokens with probabilities), next_token_logprob[layer][pos] for pos < T-1."""
    return compute(model, encode_text(model, tokenizer, text), top_k, tokenizer)


def write(data: dict[str, Any], out: Path) -> list[Path]:
    """logit_lens.json and logit_lens.png (colour: top-1 probability; text: top-1 token)."""
    plt = pyplot()
    json_path, png = out / "logit_lens.json", out / "logit_lens.png"
    atomic_write_text(json_path, json.dumps(data) + "\n")
    prob = [[pos[0]["prob"] for pos in layer] for layer in data["top"]]
    rows, T = len(prob), len(prob[0])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * T + 2.5), 0.8 * rows + 2.5))
    im = ax.imshow(prob, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    if T <= 40:
        for r in range(rows):
            for c in range(T):
                ax.text(
                    c,
                    r,
                    label(data["top"][r][c][0]["token"])[:8],
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if prob[r][c] > 0.6 else "black",
                )
    ax.set_yticks(range(rows), data["layers"])
    ax.set_xticks(range(T), [label(t) for t in data["tokens"]], rotation=90, fontsize=7)
    ax.set_xlabel("input token (the cell predicts the token after it)")
    ax.set_title("logit lens: top-1 next-token prediction after each layer")
    fig.colorbar(im, ax=ax).set_label("top-1 probability")
    fig.tight_layout()
    save_figure(fig, png)
    plt.close(fig)
    return [png, json_path]
