"""Look inside a model on one text: attention maps, per-layer states, logit lens.

Names follow TransformerLens where they overlap: `blocks.{i}.hook_resid_pre` is the
residual stream entering block i, `blocks.{i}.attn.hook_pattern` its attention
probabilities. The logit lens decodes each layer's residual stream through the
final norm and the unembedding, showing how the prediction forms layer by layer.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lumenlm.errors import ConfigError, LumenError
from lumenlm.model import GPT
from lumenlm.modelio import atomic_write_text, save_figure


@dataclass
class Inspection:
    """Everything `inspect_text` measured on one text."""

    tokens: list[str]
    ids: list[int]
    attentions: list[torch.Tensor]  # per layer: (n_heads, T, T)
    hidden_states: list[torch.Tensor]  # n_layers + 1 entries of (T, d_model)
    lens_logprobs: list[
        torch.Tensor
    ]  # per hidden state: (T, V) log-probs after final norm + unembed


@torch.inference_mode()
def inspect_text(model: GPT, text: str, tokenizer: Any = None) -> Inspection:
    """Run `model` once on `text` (cropped to the context) with attentions and states."""
    tokenizer = tokenizer or model.tokenizer
    if tokenizer is None:
        raise LumenError("the model has no tokenizer.json; pass a model directory that has one")
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    if not ids:
        raise LumenError("--text encodes to no tokens; give some text")
    ids = ids[-model.config.context_length :]
    device = model.tok_emb.weight.device
    out = model(
        torch.tensor([ids], device=device), return_attentions=True, return_hidden_states=True
    )
    assert out.attentions is not None and out.hidden_states is not None
    hidden = [h[0].float().cpu() for h in out.hidden_states]
    lens = []
    for h in out.hidden_states:
        logits = model.lm_head(model.final_norm(h))[0].float()
        lens.append(torch.log_softmax(logits, dim=-1).cpu())
    return Inspection(
        tokens=[tokenizer.decode([i]) for i in ids],
        ids=ids,
        attentions=[a[0].float().cpu() for a in out.attentions],
        hidden_states=hidden,
        lens_logprobs=lens,
    )


def summary(ins: Inspection, tokenizer: Any, top_k: int = 5) -> dict[str, Any]:
    """JSON-able summary: per-layer residual norms, attention entropy, logit-lens top-k."""
    check_top_k(top_k, ins.lens_logprobs[0].shape[-1])
    layers = []
    for i, att in enumerate(ins.attentions):
        ent = -(att.clamp_min(1e-12).log() * att).sum(-1).mean(-1)  # (n_heads,)
        layers.append(
            {
                "layer": i,
                "hook_resid_pre_norm": [
                    round(float(x), 5) for x in ins.hidden_states[i].norm(dim=-1)
                ],
                "attn_entropy_per_head": [round(float(x), 5) for x in ent],
                "attn_pattern": [
                    [[round(float(v), 5) for v in row] for row in head] for head in att
                ],
            }
        )
    lens = []
    for i, lp in enumerate(ins.lens_logprobs):
        top = lp.topk(top_k, dim=-1)
        lens.append(
            {
                "after_layer": i - 1 if i > 0 else "embeddings",
                "top": [
                    [
                        {"token": tokenizer.decode([int(t)]), "logprob": round(float(v), 5)}
                        for v, t in zip(vals, idx)
                    ]
                    for vals, idx in zip(top.values, top.indices)
                ],
            }
        )
    return {"tokens": ins.tokens, "ids": ins.ids, "layers": layers, "logit_lens": lens}


def check_top_k(top_k: int, vocab_size: int) -> None:
    """The logit lens lists 1..vocab_size tokens per position (one-line ConfigError)."""
    if not 1 <= top_k <= vocab_size:
        raise ConfigError(
            f"--top-k must be between 1 and the vocabulary size {vocab_size}, got {top_k}"
        )


def plot_attention(ins: Inspection, path: Path) -> None:
    """One PNG grid: rows = layers, columns = heads."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_layers, n_heads = len(ins.attentions), ins.attentions[0].shape[0]
    T = len(ins.tokens)
    size = max(2.0, min(4.0, 0.25 * T))
    fig, axes = plt.subplots(
        n_layers, n_heads, figsize=(size * n_heads, size * n_layers), squeeze=False
    )
    labels = [t.replace("\n", "\\n") for t in ins.tokens]
    for layer in range(n_layers):
        for head in range(n_heads):
            ax = axes[layer][head]
            ax.imshow(ins.attentions[layer][head].numpy(), cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"L{layer} H{head}", fontsize=8)
            if T <= 24:
                ax.set_xticks(range(T), labels, rotation=90, fontsize=6)
                ax.set_yticks(range(T), labels, fontsize=6)
            else:
                ax.set_xticks([])
                ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_logit_lens(ins: Inspection, tokenizer: Any, path: Path) -> None:
    """Heatmap: log-prob of the actual next token after each layer, per position."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T = len(ins.ids)
    if T < 2:
        return
    nxt = torch.tensor(ins.ids[1:])
    grid = torch.stack([lp[:-1].gather(-1, nxt[:, None])[:, 0] for lp in ins.lens_logprobs])
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * T), 0.5 * len(ins.lens_logprobs) + 1.5))
    im = ax.imshow(
        grid.numpy(),
        aspect="auto",
        cmap="magma",
        vmin=-math.log(len(ins.lens_logprobs[0][0])),
        vmax=0,
    )
    ax.set_yticks(
        range(len(ins.lens_logprobs)),
        ["emb"] + [f"L{i}" for i in range(len(ins.lens_logprobs) - 1)],
    )
    ax.set_xticks(
        range(T - 1), [t.replace("\n", "\\n") for t in ins.tokens[1:]], rotation=90, fontsize=7
    )
    ax.set_title("logit lens: log p(next token) after each layer")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def write_inspection(model: GPT, text: str, out_dir: str | Path, top_k: int = 5) -> dict[str, Path]:
    """Write attention.png, logit_lens.png and inspect.json into `out_dir`."""
    check_top_k(top_k, model.config.vocab_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = model.tokenizer
    ins = inspect_text(model, text, tok)
    paths = {
        "json": out / "inspect.json",
        "attention": out / "attention.png",
        "logit_lens": out / "logit_lens.png",
    }
    atomic_write_text(paths["json"], json.dumps(summary(ins, tok, top_k)) + "\n")
    plot_attention(ins, paths["attention"])
    plot_logit_lens(ins, tok, paths["logit_lens"])
    return paths
