"""The activations one `run_with_cache` call kept, and the standard views of them.

`cache["blocks.0.hook_resid_pre"]` (or `cache["resid_pre", 0]`) is a tensor. The views
follow TransformerLens's `ActivationCache`:
- `accumulated_resid`: the residual stream before each layer (and after the last);
- `decompose_resid`: the stream as the sum of what wrote to it (embeddings, each
  attention and MLP output);
- `stack_head_results`: each head's own write, `z_h @ W_O[h]` (o_proj's bias is not
  a head's and is left out, as in TransformerLens);
- `logit_lens`: each accumulated stream decoded through the final norm and the
  unembedding.
`apply_ln=True` applies the final norm as the linear map it is for this input (its
divisor frozen from the run, weight included, bias left out), so the components of a
stack still sum to the normalised stream less the bias: direct logit attribution is
then `stack @ W_U[:, token]`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from lumenlm.errors import ConfigError
from lumenlm.model.norms import apply_norm_linear

_SHORT = {
    "embed": "hook_embed",
    "pos_embed": "hook_pos_embed",
    "resid_pre": "blocks.{}.hook_resid_pre",
    "resid_mid": "blocks.{}.hook_resid_mid",
    "resid_post": "blocks.{}.hook_resid_post",
    "attn_out": "blocks.{}.hook_attn_out",
    "mlp_out": "blocks.{}.hook_mlp_out",
    "q": "blocks.{}.attn.hook_q",
    "k": "blocks.{}.attn.hook_k",
    "v": "blocks.{}.attn.hook_v",
    "rot_q": "blocks.{}.attn.hook_rot_q",
    "rot_k": "blocks.{}.attn.hook_rot_k",
    "attn_scores": "blocks.{}.attn.hook_attn_scores",
    "pattern": "blocks.{}.attn.hook_pattern",
    "z": "blocks.{}.attn.hook_z",
    "pre": "blocks.{}.mlp.hook_pre",
    "pre_linear": "blocks.{}.mlp.hook_pre_linear",
    "post": "blocks.{}.mlp.hook_post",
    "scale": "blocks.{}.ln1.hook_scale",
    "normalized": "blocks.{}.ln1.hook_normalized",
}


def act_name(name: str, layer: int | None = None) -> str:
    """TransformerLens's `utils.get_act_name`: ("pattern", 3) -> blocks.3.attn.hook_pattern."""
    full = _SHORT.get(name, name)
    if "{}" in full:
        if layer is None:
            raise ConfigError(f"{name!r} is a per-layer activation; give its layer too")
        return full.format(layer)
    return full


class ActivationCache(Mapping[str, Tensor]):
    """Activations by hook name, plus the residual-stream views (see the module doc)."""

    def __init__(self, store: dict[str, Tensor], model: Any) -> None:
        """`store` maps hook names to activations; `model` is the `GPT` that made them
        (typed loosely: this module sits below `gpt` in the package's import order)."""
        self._store = store
        self.model = model
        self.n_layers = model.config.n_layers

    # -- the mapping --------------------------------------------------------------
    def __getitem__(self, key: str | tuple[str, int]) -> Tensor:
        name = act_name(*key) if isinstance(key, tuple) else act_name(key)
        try:
            return self._store[name]
        except KeyError:
            raise KeyError(
                f"the cache holds no {name!r}: run_with_cache with a names_filter that "
                "includes it (None keeps every hook)"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def __repr__(self) -> str:
        return f"ActivationCache({list(self._store)})"

    def _get(self, name: str) -> Tensor:
        try:
            return self[name]
        except KeyError as e:
            raise ConfigError(e.args[0]) from None

    def _layers(self, layer: int | None) -> int:
        layer = self.n_layers if layer is None else layer
        if layer < 0:
            layer += self.n_layers + 1
        if not 0 <= layer <= self.n_layers:
            raise ConfigError(f"layer must be 0..{self.n_layers}, got {layer}")
        return layer

    # -- views ----------------------------------------------------------------------
    def apply_ln_to_stack(self, stack: Tensor) -> Tensor:
        """The final norm as a linear map with the divisor cached in
        `ln_final.hook_scale` (weight applied, bias not): see the module doc."""
        norm = self.model.final_norm
        if not hasattr(norm, "hook_scale"):
            return stack  # post-norm: no final norm
        return apply_norm_linear(norm, stack, self._get("ln_final.hook_scale"))

    def accumulated_resid(
        self,
        layer: int | None = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        return_labels: bool = False,
    ) -> Tensor | tuple[Tensor, list[str]]:
        """The stream entering each layer before `layer` (default: all, plus the final
        output), stacked: (components, batch, pos, d_model)."""
        layer = self._layers(layer)
        parts, labels = [], []
        for i in range(layer):
            parts.append(self._get(f"blocks.{i}.hook_resid_pre"))
            labels.append(f"{i}_pre")
            if incl_mid:
                parts.append(self._get(f"blocks.{i}.hook_resid_mid"))
                labels.append(f"{i}_mid")
        if layer == self.n_layers:
            parts.append(self._get(f"blocks.{self.n_layers - 1}.hook_resid_post"))
            labels.append("final_post")
        stack = torch.stack(parts)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack)
        return (stack, labels) if return_labels else stack

    def decompose_resid(
        self,
        layer: int | None = None,
        mode: str = "all",
        incl_embeds: bool = True,
        apply_ln: bool = False,
        return_labels: bool = False,
    ) -> Tensor | tuple[Tensor, list[str]]:
        """What wrote to the stream before `layer`: embeddings (`incl_embeds`), then each
        layer's attention and/or MLP output (`mode` "all", "attn" or "mlp"); their sum
        is the stream entering `layer` (pre-norm models only)."""
        if not self.model.config.pre_norm:
            raise ConfigError(
                "decompose_resid needs a pre-norm model: post-norm blocks "
                "normalise the stream, so it is no sum of its writes"
            )
        if mode not in ("all", "attn", "mlp"):
            raise ConfigError(f"mode must be all, attn or mlp, got {mode!r}")
        layer = self._layers(layer)
        parts, labels = [], []
        if incl_embeds:
            parts.append(self._get("hook_embed"))
            labels.append("embed")
            if self.model.pos_emb is not None:
                parts.append(self._get("hook_pos_embed"))
                labels.append("pos_embed")
        for i in range(layer):
            if mode in ("all", "attn"):
                parts.append(self._get(f"blocks.{i}.hook_attn_out"))
                labels.append(f"{i}_attn_out")
            if mode in ("all", "mlp"):
                parts.append(self._get(f"blocks.{i}.hook_mlp_out"))
                labels.append(f"{i}_mlp_out")
        stack = torch.stack(parts)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack)
        return (stack, labels) if return_labels else stack

    def head_results(self, layer: int) -> Tensor:
        """Layer `layer`'s per-head writes to the stream: (batch, pos, n_heads, d_model)."""
        attn = self.model.blocks[layer].attn
        z = self._get(f"blocks.{layer}.attn.hook_z")  # (B, T, H, dv)
        w_o = attn.o_proj.weight.view(-1, attn.n_heads, attn.d_value)  # (d_model, H, dv)
        return torch.einsum("bthv,dhv->bthd", z, w_o.to(z.dtype))

    def stack_head_results(
        self, layer: int | None = None, apply_ln: bool = False, return_labels: bool = False
    ) -> Tensor | tuple[Tensor, list[str]]:
        """Every head's write before `layer` (default: all layers), stacked:
        (layers * heads, batch, pos, d_model), labels `L{l}H{h}`."""
        layer = self._layers(layer)
        parts, labels = [], []
        for i in range(layer):
            res = self.head_results(i)
            parts.extend(res.unbind(2))
            labels.extend(f"L{i}H{h}" for h in range(res.shape[2]))
        stack = torch.stack(parts)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack)
        return (stack, labels) if return_labels else stack

    def logit_lens(
        self, layer: int | None = None, incl_mid: bool = False, return_labels: bool = False
    ) -> Tensor | tuple[Tensor, list[str]]:
        """Log-probabilities of each accumulated stream decoded through the full final
        norm and the unembedding: (components, batch, pos, vocab). The last component
        (`final_post`) is the model's own output distribution."""
        stack, labels = self.accumulated_resid(layer, incl_mid, return_labels=True)
        m = self.model
        logp = torch.log_softmax(m.lm_head(m.final_norm(stack)).float(), dim=-1)
        return (logp, labels) if return_labels else logp
