"""Per-token loss: how surprised the model is by each token of the text, as an HTML page
where tokens are coloured by loss and hovering one shows what the model predicted there.
The page is self-contained (inline CSS, no script, no network request)."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lumenlm.inspect.text import Encoded, encode_text, tokenizer_of, top_tokens
from lumenlm.modelio import atomic_write_text


@torch.inference_mode()
def compute(model: Any, enc: Encoded, top_k: int = 5, tokenizer: Any = None) -> dict[str, Any]:
    """losses[t]: -log p(token t | tokens before it) (None for the first token); top[t]:
    the k likeliest tokens the model predicted for position t."""
    tok = tokenizer_of(model, tokenizer)
    logits = model(enc.tensor(model)).logits[0].float()
    logp = F.log_softmax(logits, dim=-1)
    nxt = torch.tensor(enc.ids[1:], device=logp.device)
    losses = (-logp[:-1].gather(-1, nxt[:, None])[:, 0]).tolist()
    top = top_tokens(logp[:-1], tok, top_k)
    return {
        **enc.meta(),
        "losses": [None] + [round(v, 5) for v in losses],
        "top": [None, *top],
        "mean_loss": round(sum(losses) / len(losses), 5) if losses else None,
    }


def token_losses(model: Any, tokenizer: Any, text: str, top_k: int = 5) -> dict[str, Any]:
    """JSON-able per-token loss of `model` on `text`: losses[t], top[t] (predictions for
    token t), mean_loss."""
    return compute(model, encode_text(model, tokenizer, text), top_k, tokenizer)


_CSS = """
body { font-family: sans-serif; margin: 2em; max-width: 60em; }
.text { font-family: monospace; font-size: 15px; line-height: 2.2; white-space: pre-wrap; }
.tok { position: relative; padding: 2px 0; border-radius: 3px; }
.tok .tip { display: none; position: absolute; left: 0; top: 1.9em; z-index: 1;
  background: #222; color: #eee; padding: 6px 8px; border-radius: 4px; font-size: 12px;
  white-space: pre; line-height: 1.4; }
.tok:hover .tip { display: block; }
.tok:hover { outline: 1px solid #333; }
.legend span { display: inline-block; width: 2.5em; text-align: center; font-size: 12px; }
"""


def _colour(loss: float | None, hi: float) -> str:
    """White (loss 0) to red (loss >= hi); grey for the first token, which has no loss."""
    if loss is None:
        return "#e6e6e6"
    f = max(0.0, min(1.0, loss / hi))
    g = int(255 - 170 * f)
    return f"rgb(255,{g},{g})"


def render(data: dict[str, Any]) -> str:
    """The HTML page for `compute`'s result."""
    known = [v for v in data["losses"] if v is not None]
    hi = max(max(known, default=1.0), 1e-6)
    spans = []
    for t, (token, loss, top) in enumerate(zip(data["tokens"], data["losses"], data["top"])):
        if loss is None:
            tip = "first token: no prediction"
        else:
            preds = "\n".join(f"  {p['token']!r}  {p['prob']:.3f}" for p in top)
            tip = f"token {t}: {token!r}\nloss {loss:.3f} (p = {math.exp(-loss):.3g})\n"
            tip += f"predicted:\n{preds}"
        spans.append(
            f'<span class="tok" style="background:{_colour(loss, hi)}">{html.escape(token)}'
            f'<span class="tip">{html.escape(tip)}</span></span>'
        )
    legend = "".join(
        f'<span style="background:{_colour(hi * i / 4, hi)}">{hi * i / 4:.1f}</span>'
        for i in range(5)
    )
    notice = f"<p><b>{html.escape(data['notice'])}</b></p>" if data.get("notice") else ""
    mean = data["mean_loss"]
    return (
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>per-token loss</title>"
        f"<style>{_CSS}</style></head><body><h1>Per-token loss</h1>{notice}"
        f"<p>{len(data['tokens'])} tokens, mean loss "
        f"{'n/a' if mean is None else f'{mean:.3f}'} nats. Hover a token for the model's "
        f"top predictions there.</p><p class='legend'>loss: {legend}</p>"
        f"<div class='text'>{''.join(spans)}</div></body></html>\n"
    )


def write(data: dict[str, Any], out: Path) -> list[Path]:
    """token_loss.html."""
    path = out / "token_loss.html"
    atomic_write_text(path, render(data))
    return [path]
