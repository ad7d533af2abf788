"""Mixed precision: autocast context and (for fp16 on CUDA) a gradient scaler.

"auto" picks bf16 on CUDA when the GPU supports it (else fp16) and fp32 on CPU/MPS.
bf16 autocast on CPU works when asked for explicitly. fp16 needs a GradScaler, which
only exists for CUDA here, so fp16 elsewhere is refused with a one-line error.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from lumenlm.errors import ConfigError


def resolve_precision(precision: str, device: torch.device) -> str:
    """Map "auto" to a concrete precision and check the choice fits the device."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"precision fp16 needs a CUDA GPU (gradient scaling); on {device.type} use bf16 or fp32"
        )
    if precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"unknown precision {precision!r}; choose fp32, bf16, fp16 or auto")
    return precision


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Autocast context for the forward pass (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 on CUDA; None otherwise (bf16 and fp32 need none)."""
    if precision == "fp16" and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None
