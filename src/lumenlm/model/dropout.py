"""Dropout whose mask is drawn by a fast random source on CPU.

Why: on CPU, torch draws a dropout mask with `bernoulli_`, about 12 ns per element on a
2-core AVX2 EPYC (Zen 3), more than the matmuls around it at the small presets' shapes:
with the presets' dropout it was 13% of a librarian-1.3m training step (the attention
probabilities alone are batch x heads x T x T elements per layer). Here the mask comes
from 32 random bits per element out of numpy's SFC64 (one `random_raw` fill, well under
1 ns per element), its 192-bit state drawn from torch's default generator at each call,
so `torch.manual_seed` and a resumed run's restored RNG state fix the masks exactly as
they fix torch's. Tensors under `MIN_ELEMENTS` keep torch's mask: there the fixed cost
of a call (the draw, the state, the conversion) is more than torch's per-element cost.

Same semantics as `F.dropout`: each element is kept independently with probability
1 - p (exact to 2^-32), kept elements are multiplied by 1 / (1 - p) held in the tensor's
dtype, as torch's CPU kernel does (so bf16 scales by bf16(1 / (1 - p)), as there), and
the backward multiplies by the same mask. The masks themselves differ from
torch's for the same seed. On other devices, and while `torch.compile` traces (inductor
generates its own fused dropout), this is `F.dropout`.
`benchmarks/bench_dropout.py` times it against `F.dropout`.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

MIN_ELEMENTS = 1 << 14
"""Smaller tensors use torch's mask. `benchmarks/bench_dropout.py --sizes` (forward and
backward, the mask forced at every size) on a 2-core AVX2 EPYC (Zen 3): 0.54x at 1K
elements, break-even at 16K, 1.70x at 64K, 2.2-2.4x from 256K up."""

_local = threading.local()  # one SFC64 per thread: its state is set, then read, per call


def fast_path(x: Tensor, numel: int | None = None) -> bool:
    """Whether `dropout` draws its own mask for `x` (a CPU tensor of at least
    `MIN_ELEMENTS`, or `numel` when given, outside compilation)."""
    n = x.numel() if numel is None else numel
    return x.device.type == "cpu" and n >= MIN_ELEMENTS and not torch.compiler.is_compiling()


def keep_mask(shape: torch.Size | tuple[int, ...], p: float) -> Tensor:
    """A bool tensor of `shape`: True with probability 1 - p each, independently.

    Bits: SFC64 whose three state words come from torch's default CPU generator (one
    draw per call; the counter starts at 1), read as signed 32-bit integers r, uniform
    on [-2^31, 2^31); kept when r >= -2^31 + round(p 2^32).
    """
    n = math.prod(shape)
    words = torch.randint(-(2**63), 2**63 - 1, (3,), dtype=torch.int64).numpy().view(np.uint64)
    gen = getattr(_local, "gen", None)
    if gen is None:
        gen = _local.gen = np.random.SFC64(0)
    gen.state = {
        "bit_generator": "SFC64",
        "state": {"state": np.array([*words, 1], dtype=np.uint64)},
        "has_uint32": 0,
        "uinteger": 0,
    }
    bits = gen.random_raw((n + 1) // 2)
    r = torch.from_numpy(bits.view(np.int32)[:n]).view(shape)
    return r >= -(2**31) + round(p * 2**32)


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """`F.dropout(x, p, training)`, with the mask from `keep_mask` on CPU."""
    if not training or p == 0.0:
        return x
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if p == 1.0 or not fast_path(x):
        return F.dropout(x, p, training)
    # torch's rounding: the scale held in x's dtype in the mask, then one product
    return x * keep_mask(x.shape, p).to(x.dtype).mul_(1.0 / (1.0 - p))


class Dropout(nn.Dropout):
    """`nn.Dropout` (same name, repr and empty state dict) that applies `dropout`."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)
