"""The optimizer: AdamW with weight decay on matrices and embeddings only, or Muon
on the blocks' matrices with that AdamW on the rest (`train.optimizer`, `train/muon.py`).

Parameters with two or more dimensions (linear weights, embeddings) decay; vectors
(norm gains, biases) do not, as in GPT-2/nanoGPT. Tied weights appear once.
"""

from __future__ import annotations

import torch

from lumenlm.config import TrainConfig


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed (dim >= 2) and not decayed (dim < 2), in a stable order."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():  # named_parameters() already skips tied duplicates
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: torch.nn.Module, cfg: TrainConfig, device: torch.device
) -> torch.optim.AdamW:
    """AdamW with the fused kernel (one pass over each tensor) on CPU and CUDA.

    Measured on CPU (2-core EPYC, torch 2.13): fused is 4-6x faster than the foreach
    kernel (librarian-1.3m 0.49 vs 1.98 ms per step; 4 layers of lumenbase 25 vs 143 ms).
    Other devices (MPS, not tested here) use the foreach (multi-tensor) kernel.
    """
    kwargs = {"fused": True} if device.type in ("cpu", "cuda") else {"foreach": True}
    if cfg.optimizer == "muon":
        from lumenlm.train.muon import MuonAdamW, muon_groups

        return MuonAdamW(
            muon_groups(model, cfg.weight_decay, cfg.muon_momentum),
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            eps=cfg.eps,
            **kwargs,
        )
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        **kwargs,
    )
