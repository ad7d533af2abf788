"""Which torch device a command runs on: one rule for train, eval, generate, chat, serve."""

from __future__ import annotations

import torch

from lumenlm.errors import ConfigError


def resolve_device(name: str | None, local_rank: int = 0) -> torch.device:
    """ "auto"/None -> cuda, else mps, else cpu; "cuda" under torchrun -> cuda:<local_rank>."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                "device cuda requested but no CUDA GPU is available; use --device cpu"
            )
        return torch.device(f"cuda:{local_rank}") if name == "cuda" else torch.device(name)
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ConfigError("device mps requested but MPS is not available; use --device cpu")
    if name not in ("cpu", "mps"):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return torch.device(name)


def to_device(
    x: torch.Tensor, y: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a batch (inputs, targets) to `device`; on CUDA through pinned memory, so the
    copy is asynchronous and overlaps the GPU work already queued."""
    if device.type != "cuda":
        return x.to(device), y.to(device)
    return (
        x.pin_memory().to(device, non_blocking=True),
        y.pin_memory().to(device, non_blocking=True),
    )
