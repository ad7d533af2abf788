"""Head ablation: the loss change on the text when one head's output (`hook_z`) is set to
zero, for every layer and head. Positive = the head helps predict this text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lumenlm.errors import LumenError
from lumenlm.inspect.plots import heatmap
from lumenlm.inspect.text import Encoded, encode_text, rounded


def _loss(model: Any, x: torch.Tensor, fwd_hooks: list) -> float:
    logits = model.run_with_hooks(x, fwd_hooks=fwd_hooks).logits[0, :-1].float()
    return float(F.cross_entropy(logits, x[0, 1:]))


@torch.inference_mode()
def compute(model: Any, enc: Encoded, top_k: int = 5) -> dict[str, Any]:
    """base_loss and delta[layer][head] = loss with that head zeroed - base_loss."""
    if len(enc.ids) < 2:
        raise LumenError("head ablation needs a text of at least two tokens")
    x = enc.tensor(model)
    base = _loss(model, x, [])
    delta = torch.zeros(model.config.n_layers, model.config.n_heads)
    for layer in range(model.config.n_layers):
        for head in range(model.config.n_heads):

            def zero(z: torch.Tensor, hook: Any, head: int = head) -> torch.Tensor:
                z = z.clone()
                z[:, :, head] = 0
                return z

            delta[layer, head] = _loss(model, x, [(f"blocks.{layer}.attn.hook_z", zero)]) - base
    return {**enc.meta(), "base_loss": round(base, 5), "delta": rounded(delta, 5)}


def head_ablation(model: Any, tokenizer: Any, text: str) -> dict[str, Any]:
    """JSON-able head ablation of `model` on `text`: base_loss (mean next-token loss,
    nats) and delta[layer][head], the loss change with that head zeroed."""
    return compute(model, encode_text(model, tokenizer, text))


def write(data: dict[str, Any], out: Path) -> list[Path]:
    """head_ablation.png: the layer x head heat map of loss changes."""
    path = out / "head_ablation.png"
    lim = max(1e-6, max(abs(v) for row in data["delta"] for v in row))
    heatmap(
        data["delta"],
        path,
        f"loss change when one head is zeroed (base loss {data['base_loss']:.3f})",
        "head",
        "layer",
        cmap="RdBu_r",
        vmin=-lim,
        vmax=lim,
        colorbar="Δ loss (nats)",
    )
    return [path]
