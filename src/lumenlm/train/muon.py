"""Muon for the blocks' weight matrices, AdamW for everything else, in one optimizer.

Why: Muon (Keller Jordan, 2024; used by modded-nanogpt and nanochat) replaces each
hidden matrix's update by the nearest semi-orthogonal matrix of its momentum: all
singular values about 1, so no direction of the matrix learns much faster than the
others. At 0.1B parameters its authors measure 1.4-1.7x fewer tokens than tuned
AdamW for the same loss. Embeddings, the output head, norm gains and biases are not
hidden matrices (their rows are looked up, or are vectors) and keep AdamW.

The orthogonalization is five Newton-Schulz iterations of the quintic
`X <- a X + (b A + c A^2) X` with `A = X X^T` (coefficients 3.4445, -4.7750, 2.0315,
chosen to push singular values into about [0.7, 1.2] fast, not to converge exactly),
run in fp32 here (CPU) on the Nesterov momentum. The update is scaled by
sqrt(max(1, rows / cols)), so tall and wide matrices take steps of the same RMS size.

One `torch.optim.Optimizer` holds both kinds of group, so the trainer's schedule,
gradient clipping, checkpoints and DDP work unchanged: AdamW groups run the fused
AdamW kernel of the parent class; in Muon groups (`group["muon"]`) the trainer sets
the scheduled lr times muon_lr / lr (`lr_scale`), so both follow one schedule.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5


def orthogonalize(g: Tensor, steps: int = NS_STEPS, eps: float = 1e-7) -> Tensor:
    """About the nearest semi-orthogonal matrix to 2-D `g` (U V^T of its SVD), in fp32."""
    a, b, c = NS_COEFFICIENTS
    x = g.float()
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / (x.norm() + eps)  # spectral norm <= Frobenius norm <= 1: inside the basin
    for _ in range(steps):
        m = x @ x.T
        x = a * x + (b * m + c * (m @ m)) @ x
    return x.T if tall else x


def is_muon_param(name: str, p: Tensor) -> bool:
    """A 2-D weight matrix inside a block (not an embedding, the head, a norm or a bias)."""
    return p.dim() == 2 and name.startswith("blocks.") and name.endswith(".weight")


class MuonAdamW(torch.optim.AdamW):
    """AdamW for the groups without `muon`, Muon for the groups with `muon=True`.

    A Muon group reads `lr` (the trainer sets it to the scheduled lr times
    `lr_scale`), `momentum` and `weight_decay` (decoupled, as AdamW's); its state per
    parameter is `momentum_buffer` and `step`.
    """

    def __init__(self, groups: list[dict[str, Any]], **adamw: Any) -> None:
        super().__init__(groups, **adamw)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups = self.param_groups
        self.param_groups = [g for g in groups if not g.get("muon")]
        try:
            super().step()
        finally:
            self.param_groups = groups
        for group in groups:
            if group.get("muon"):
                self._muon_step(group)
        return loss

    def _muon_step(self, group: dict[str, Any]) -> None:
        lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
                # a step count as AdamW keeps one (its state loader expects it everywhere)
                state["step"] = torch.zeros((), dtype=torch.float32)
            state["step"] += 1
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - mom)
            update = orthogonalize(p.grad.lerp(buf, mom))  # Nesterov
            scale = max(1.0, p.shape[0] / p.shape[1]) ** 0.5
            if wd:
                p.mul_(1 - lr * wd)
            p.add_(update.to(p.dtype), alpha=-lr * scale)


def lr_scale(group: dict[str, Any], lr: float, muon_lr: float) -> float:
    """The factor from the scheduled (AdamW) lr to this group's lr."""
    return muon_lr / lr if group.get("muon") else 1.0


def muon_groups(
    model: torch.nn.Module, weight_decay: float, momentum: float
) -> list[dict[str, Any]]:
    """Three groups in a stable order: Muon matrices, AdamW decayed (other dim >= 2),
    AdamW not decayed (dim < 2)."""
    muon, decay, no_decay = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if is_muon_param(name, p):
            muon.append(p)
        else:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": muon, "muon": True, "momentum": momentum, "weight_decay": weight_decay},
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
