"""The two normalisations (LayerNorm, RMSNorm), each with TransformerLens's two hook points.

`hook_scale` is the divisor (LayerNorm: sqrt(var + eps); RMSNorm: sqrt(mean(x^2) + eps)),
shape (batch, pos, 1); `hook_normalized` is the normalised input *before* the weight
and bias, as in TransformerLens. `forward` is the plain fused computation of
before; the model calls `forward_hooked` only while a hook is attached to it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lumenlm.config import ModelConfig
from lumenlm.model.hook_points import HookPoint


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32 like Llama's (then cast back)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)

    def forward_hooked(self, x: Tensor) -> Tensor:
        """`forward` through the hook points (the same numbers when no hook edits them)."""
        dtype = x.dtype
        x32 = x.float()
        ms = x32.pow(2).mean(-1, keepdim=True) + self.eps
        if self.hook_scale.active:
            x32 = x32 / self.hook_scale(ms.sqrt())
        else:
            x32 = x32 * torch.rsqrt(ms)
        normed = x32.to(dtype)
        if self.hook_normalized.active:
            normed = self.hook_normalized(normed)
        return self.weight * normed


class LayerNorm(nn.LayerNorm):
    """`nn.LayerNorm` (same parameters and state-dict keys) with the two hook points."""

    def __init__(self, dim: int, eps: float, bias: bool) -> None:
        super().__init__(dim, eps=eps, bias=bias)
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward_hooked(self, x: Tensor) -> Tensor:
        """`forward` through the hook points (unfused, so within rounding of it)."""
        if not (self.hook_scale.active or self.hook_normalized.active):
            return super().forward(x)
        centred = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((centred.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        normed = self.hook_normalized(centred / scale)
        out = normed * self.weight
        return out + self.bias if self.bias is not None else out


def norm(module: nn.Module, x: Tensor, hooked: bool) -> Tensor:
    """Apply a norm (or nn.Identity), through its hook points only when `hooked`."""
    if hooked and isinstance(module, (RMSNorm, LayerNorm)):
        return module.forward_hooked(x)
    return module(x)


def make_norm(cfg: ModelConfig) -> nn.Module:
    """The norm `cfg` asks for, over d_model."""
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.d_model, cfg.norm_eps)
    return LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.norm_bias)


def norm_scale(norm: nn.Module, x: Tensor) -> Tensor:
    """What `norm`'s hook_scale would show for input `x` (batch, pos, 1): its divisor."""
    if isinstance(norm, RMSNorm):
        return (x.float().pow(2).mean(-1, keepdim=True) + norm.eps).sqrt().to(x.dtype)
    if isinstance(norm, nn.LayerNorm):
        return (x.var(-1, keepdim=True, unbiased=False) + norm.eps).sqrt()
    return torch.ones_like(x[..., :1])


def apply_norm_linear(norm: nn.Module, x: Tensor, scale: Tensor) -> Tensor:
    """`norm` as the linear map it is once its divisor `scale` is frozen: centre
    (LayerNorm), divide, multiply by the weight, no bias. Summed over the parts of a
    residual stream this gives the norm's output less its bias: the basis of direct
    logit attribution."""
    if isinstance(norm, nn.LayerNorm):
        x = x - x.mean(-1, keepdim=True)
    elif not isinstance(norm, RMSNorm):
        return x  # nn.Identity (post-norm models have no final norm)
    return x / scale * norm.weight


def norm_bias(norm: nn.Module) -> Tensor | None:
    """The additive bias of `norm`, if it has one."""
    return getattr(norm, "bias", None) if isinstance(norm, nn.LayerNorm) else None


__all__ = ["LayerNorm", "RMSNorm", "apply_norm_linear", "make_norm", "norm_bias", "norm_scale"]
