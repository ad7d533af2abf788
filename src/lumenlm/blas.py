"""Which BLAS multiplies CPU matrices: torch's own (MKL) or numpy's (OpenBLAS), measured.

Why: torch's x86 wheels run fp32 matrix products through Intel MKL, and MKL does not run
its best code on every CPU. On the 2-core AMD EPYC (Zen 3, AVX2, no AVX-512) this was
written on, every product shape measured ran faster through the OpenBLAS that numpy
ships, most at the one and eight rows of decoding: the lumenbase-128m head 1.5x at one
row and 3.2x at eight (`benchmarks/bench_blas.py`). On an Intel CPU MKL may well be the
faster one. So the choice is timed on this CPU, once per process, never assumed from
the vendor:

- `probe()` multiplies decode-shaped matrices both ways, interleaved, and picks numpy only
  when it is at least `MARGIN` times faster and its product equals torch's to float
  rounding;
- `LUMENLM_BLAS=torch` never uses numpy's; `LUMENLM_BLAS=numpy` uses it for every model
  size, without a probe (to compare); `auto`, the default, probes for large models.

Only the eager decode step (`model.decode_step`: generate, chat and serve) of large models
uses this (`STREAM_BYTES`). Inside a training step or an evaluation the two libraries'
thread pools take turns on the same cores, and trials with every `nn.Linear` through
numpy were no faster there (benchmarks/RESULTS.md, `benchmarks/bench_blas.py --train`),
so training and evaluation keep torch's BLAS.

The product is the same fp32 matrix product; only the kernel's summation order differs, so
results agree to rounding (tests/test_blas.py). While a step multiplies through numpy,
numpy's BLAS gets torch's thread count and torch runs one thread (`numpy_threads`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from lumenlm.errors import ConfigError

ENV = "LUMENLM_BLAS"
"""auto (probe), torch, or numpy."""
CHOICES = ("auto", "torch", "numpy")
MARGIN = 1.2
"""numpy must be at least this many times faster in the probe to be chosen."""
PROBE_SHAPES = ((1, 512, 2048), (8, 512, 2048), (1, 2048, 512))
"""(rows, in, out) of the probe's products: decode-shaped, 4 MB of weights each."""
PROBE_ROUNDS = 7
"""Rounds of the probe; each side's best round counts (see `probe`)."""
STREAM_BYTES = 128 << 20
"""With `auto`, models with at least this many parameter bytes decode through numpy's BLAS
(when the probe finds it faster). They stream every weight from memory for each token,
so the product kernel's throughput is the step's speed: lumenbase-128m (490 MiB) decoded
1.4-2.2x faster. Smaller models' steps are bound by the cost per op, and the second
thread pool cost more than the products gained: whole generate calls of librarian-1.3m
and lumiere-1m ran at 0.30-0.97x (benchmarks/RESULTS.md, "Which BLAS multiplies")."""

_choice: str | None = None
_threads: int | None = None
_timer: Callable[[], float] = time.perf_counter


def requested() -> str:
    """The `LUMENLM_BLAS` setting, validated."""
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ConfigError(f"{ENV} must be one of {', '.join(CHOICES)}, got {value!r}; fix it")
    return value


def numpy_mm(a: Tensor, b: Tensor) -> Tensor:
    """`a @ b` for 2-D CPU float32/float64 tensors (no gradient), through numpy's BLAS.

    Strided views (a transposed weight) are passed as they are: numpy hands BLAS the
    transpose flag. The result is a new tensor sharing numpy's buffer. numpy's BLAS runs
    the threads last given to `set_threads` (its own default before that).
    """
    return torch.from_numpy(np.matmul(a.numpy(), b.numpy()))


def set_threads(n: int) -> None:
    """Run numpy's BLAS on `n` threads (through threadpoolctl; a no-op when unchanged)."""
    global _threads
    if n != _threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n, user_api="blas")
        _threads = n


@contextlib.contextmanager
def numpy_threads() -> Iterator[None]:
    """For the duration: numpy's BLAS on torch's intra-op threads, torch's own ops on one.

    Two thread pools on the same cores slow each other down: after every parallel op,
    torch's OpenMP threads spin-wait for more work while OpenBLAS's threads want the
    cores, and the other way round. With both pools on 2 threads, a lumenbase-128m
    decode step on the 2-core EPYC took about twice as long as through torch's BLAS
    alone; like this it took about two thirds. A decode step's own torch ops (norms,
    RoPE, one-token attention) are too small to gain from threads.
    """
    n = torch.get_num_threads()
    set_threads(n)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def probe(rounds: int = PROBE_ROUNDS) -> tuple[str, float]:
    """("numpy" or "torch", torch's time / numpy's time) over `PROBE_SHAPES`.

    Each round times every shape once each way, alternating; the ratio is of each
    side's best round. On a shared host a slow spell lengthens some rounds and never
    shortens one, so the best round is the closest to each side's own speed. Measured on
    the 2-core EPYC (36 probes of 7 rounds, the two ratios from the same rounds): the
    ratio of medians fell below `MARGIN` 3 times (0.90, 0.97, 1.03), which picks torch's
    BLAS for that process, while the ratio of best rounds never went below 1.54 (a
    `python -m benchmarks` run, with the medians, had lumenbase-128m decode through
    torch's BLAS in one of its three rounds). numpy is refused, whatever its speed, if
    its product differs from torch's beyond float rounding (a broken or mismatched BLAS).
    """
    set_threads(torch.get_num_threads())
    gen = torch.Generator().manual_seed(0)
    pairs = [
        (torch.randn(r, k, generator=gen), torch.randn(k, n, generator=gen))
        for r, k, n in PROBE_SHAPES
    ]
    for a, b in pairs:
        if not torch.allclose(numpy_mm(a, b), torch.mm(a, b), rtol=1e-4, atol=1e-4):
            return "torch", 0.0

    def once(fn: Callable[[Tensor, Tensor], Tensor]) -> float:
        start = _timer()
        for a, b in pairs:
            for _ in range(4):
                fn(a, b)
        return _timer() - start

    once(torch.mm), once(numpy_mm)  # warm-up: pages, thread pools
    t_torch, t_numpy = [], []
    for _ in range(rounds):
        t_torch.append(once(torch.mm))
        t_numpy.append(once(numpy_mm))
    ratio = min(t_torch) / max(min(t_numpy), 1e-12)
    return ("numpy" if ratio >= MARGIN else "torch"), ratio


def choice() -> str:
    """ "numpy" or "torch": `LUMENLM_BLAS` when set, else the probe (run once per process)."""
    global _choice
    want = requested()
    if want != "auto":
        return want
    if _choice is None:
        _choice = probe()[0]
    return _choice


def parameter_bytes(module: torch.nn.Module) -> int:
    """Bytes of `module`'s parameters: what `STREAM_BYTES` is compared with."""
    return sum(p.numel() * p.element_size() for p in module.parameters())


def decode_choice(
    weight: Tensor, model_bytes: int
) -> tuple[Callable[[Tensor, Tensor], Tensor], str]:
    """The 2-D product for decoding a model of `model_bytes` parameter bytes with
    `weight`'s device and dtype, and why, in words (for reports). For CPU
    float32/float64: `LUMENLM_BLAS=numpy` gives `numpy_mm` at any size, `torch` gives
    `torch.mm`, and `auto` gives `numpy_mm` for a model of at least `STREAM_BYTES` when
    the probe says numpy is faster. Anything else (a GPU, bf16, which numpy lacks) gets
    `torch.mm`."""
    if weight.device.type != "cpu" or weight.dtype not in (torch.float32, torch.float64):
        return torch.mm, "torch's"
    want = requested()
    if want == "numpy":
        return numpy_mm, f"numpy's (OpenBLAS), forced by {ENV}=numpy"
    if want == "torch":
        return torch.mm, f"torch's, forced by {ENV}=torch"
    if model_bytes < STREAM_BYTES:
        return torch.mm, "torch's (model below blas.STREAM_BYTES)"  # no probe for small models
    if choice() == "numpy":
        return numpy_mm, "numpy's (OpenBLAS), chosen by the probe"
    return torch.mm, "torch's"


def decode_mm(weight: Tensor, model_bytes: int) -> Callable[[Tensor, Tensor], Tensor]:
    """`decode_choice`'s product."""
    return decode_choice(weight, model_bytes)[0]


def reset() -> None:
    """Forget the probe's choice and the thread setting (tests)."""
    global _choice, _threads
    _choice = _threads = None
