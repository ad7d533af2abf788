"""Mixed precision: autocast context and (for fp16) a gradient scaler.

"auto" picks bf16 on CUDA when the GPU supports it (else fp16) and fp32 on CPU/MPS.
On a CPU without native bf16 (no AMX-BF16/AVX512-BF16), an explicit bf16 prints a
one-line warning with the measured slowdown (`devices.warn_slow_bf16`). "auto" stays
fp32 on every CPU for now: bf16 autocast's speed-up and its loss against fp32 have not
been measured on a native-bf16 CPU by this project yet (see benchmarks/RESULTS.md).
bf16 needs no scaler: it has fp32's exponent range. fp16 gradients underflow without
loss scaling, so fp16 always trains with a `torch.amp.GradScaler` for its device.
fp16 on CPU is slow on most processors, but it runs the same scaler code path as a
GPU (skipped steps on overflow, scaler state in checkpoints), which is how the test
suite checks that path on machines without a GPU.

On CUDA, fp32 matmuls use TensorFloat-32 tensor cores unless `train.tf32` is false
(as in nanoGPT); CPU matmuls are never changed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, get_args

import torch

from lumenlm.config import Dtype
from lumenlm.devices import warn_slow_bf16
from lumenlm.errors import ConfigError


def resolve_precision(precision: str, device: torch.device) -> str:
    """Map "auto" to a concrete precision and check the choice fits the device."""
    if precision == "auto":
        if device.type == "cuda":
            # emulated bf16 (V100, T4) is slow: those GPUs get fp16 with a scaler
            return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
        return "fp32"
    if precision not in get_args(Dtype):
        choices = ", ".join(get_args(Dtype))
        raise ConfigError(f"unknown precision {precision!r}; choose {choices} or auto")
    if precision == "bf16":
        warn_slow_bf16(device, "--precision bf16")
    return precision


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Autocast context for the forward pass (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 on the training device; None for bf16 and fp32 (no need)."""
    if precision != "fp16":
        return None
    try:
        return torch.amp.GradScaler(device.type)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"precision fp16 needs gradient scaling, which torch does not offer on "
            f"{device.type} ({exc}); use bf16 or fp32"
        ) from None


def configure_matmul(device: torch.device, tf32: bool) -> Callable[[], None]:
    """On CUDA, let fp32 matmuls and convolutions use TF32 (`tf32`) or keep full fp32.

    The setting is process-wide; the returned function puts the previous one back (the
    trainer calls it when `fit` ends, so later work in the same process is unaffected).
    """
    if device.type != "cuda":
        return lambda: None
    before = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = tf32

    def restore() -> None:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]

    return restore
