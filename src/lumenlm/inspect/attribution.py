"""Direct logit attribution: how much each head, each MLP and the embeddings write
straight into the logit of the token the model predicts.

With the final norm's divisor frozen at its value for this input (the standard
convention), the norm is linear, so the logit of token y is exactly the sum of
`component @ norm_weight / scale . W_U[:, y]` over everything that wrote to the
residual stream, plus the norm's and lm_head's biases. The returned `check` is that sum,
equal to the logit up to rounding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lumenlm.errors import ConfigError
from lumenlm.inspect.plots import heatmap
from lumenlm.inspect.text import Encoded, encode_text, label, rounded, tokenizer_of
from lumenlm.model.norms import norm_bias


@torch.inference_mode()
def compute(model: Any, enc: Encoded, top_k: int = 5, tokenizer: Any = None) -> dict[str, Any]:
    """Per position t: the predicted token, its logit, and the contributions of each head
    (L x H), each layer's attention bias and MLP, the embeddings and the constant biases."""
    tok = tokenizer_of(model, tokenizer)
    cfg = model.config
    if not cfg.pre_norm:
        raise ConfigError(
            "direct logit attribution needs a pre-norm model (this one "
            "normalises after each sublayer); pick other --analyses"
        )
    logits, cache = model.run_with_cache(enc.tensor(model))
    logits = logits[0].float()
    pred = logits.argmax(-1)  # (T,)
    w_u = model.lm_head.weight[pred].float()  # (T, d): each position's unembedding row

    def to_logit(stack: torch.Tensor) -> torch.Tensor:  # (n, 1, T, d) -> (n, T)
        return (cache.apply_ln_to_stack(stack).float()[:, 0] * w_u).sum(-1)

    L, H = cfg.n_layers, cfg.n_heads
    heads = to_logit(cache.stack_head_results()).view(L, H, -1)  # (L, H, T)
    mlp = to_logit(torch.stack([cache["mlp_out", i] for i in range(L)]))  # (L, T)
    T = len(enc.ids)
    d = cfg.d_model
    zero = torch.zeros(d, device=logits.device, dtype=logits.dtype)
    b_o = torch.stack(
        [
            (
                model.blocks[i].attn.o_proj.bias.float()
                if model.blocks[i].attn.o_proj.bias is not None
                else zero
            )
            for i in range(L)
        ]
    )  # (L, d)
    attn_bias = to_logit(b_o[:, None, None, :].expand(L, 1, T, d).to(cache["embed"].dtype))
    embeds = cache.decompose_resid(layer=0)  # embed (+ pos_embed)
    embed = to_logit(embeds).sum(0)
    const = torch.zeros(T, device=logits.device)
    ln_b = norm_bias(model.final_norm)
    if ln_b is not None:
        const = const + (w_u * ln_b.float()).sum(-1)
    if model.lm_head.bias is not None:
        const = const + model.lm_head.bias.float()[pred]
    total = heads.sum((0, 1)) + mlp.sum(0) + attn_bias.sum(0) + embed + const
    return {
        **enc.meta(),
        "predicted": [tok.decode([int(i)]) for i in pred],
        "logit": rounded(logits.gather(-1, pred[:, None])[:, 0], 4),
        "heads": rounded(heads.permute(2, 0, 1), 4),  # [pos][layer][head]
        "mlp": rounded(mlp.T, 4),  # [pos][layer]
        "attn_bias": rounded(attn_bias.T, 4),  # [pos][layer]
        "embed": rounded(embed, 4),
        "bias": rounded(const, 4),
        "check": rounded(total, 4),
    }


def direct_logit_attribution(model: Any, tokenizer: Any, text: str) -> dict[str, Any]:
    """JSON-able direct logit attribution of `model` on `text`, per position:
    predicted, logit, heads[pos][layer][head], mlp[pos][layer], attn_bias[pos][layer],
    embed[pos], bias[pos]; check[pos] (their sum) equals logit[pos]."""
    return compute(model, encode_text(model, tokenizer, text), tokenizer=tokenizer)


def write(data: dict[str, Any], out: Path) -> list[Path]:
    """dla_heads.png (last position, layer x head) and dla_layers.png (per layer)."""
    t = len(data["tokens"]) - 1
    what = f"after '{label(data['tokens'][t])}' -> predicted '{label(data['predicted'][t])}'"
    heads = data["heads"][t]
    lim = max(1e-6, max(abs(v) for row in heads for v in row))
    p1, p2 = out / "dla_heads.png", out / "dla_layers.png"
    heatmap(
        heads,
        p1,
        f"direct logit attribution per head\n{what}",
        "head",
        "layer",
        cmap="RdBu_r",
        vmin=-lim,
        vmax=lim,
        colorbar="logit contribution",
    )
    L = len(heads)
    rows = [[data["attn_bias"][t][i] + sum(heads[i]) for i in range(L)], data["mlp"][t]]
    lim = max(1e-6, max(abs(v) for row in rows for v in row))
    heatmap(
        rows,
        p2,
        f"direct logit attribution per layer (embed {data['embed'][t]:.2f})\n{what}",
        "layer",
        "",
        cmap="RdBu_r",
        vmin=-lim,
        vmax=lim,
        yticks=["attention", "MLP"],
        colorbar="logit contribution",
    )
    return [p1, p2]
