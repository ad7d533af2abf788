"""Which BLAS multiplies CPU matrices: torch's own (MKL) or numpy's (OpenBLAS), measured.

Why: torch's x86 wheels run fp32 matrix products through Intel MKL, and MKL does not run
its best code on every CPU. On the 2-core AMD EPYC (Zen 3, AVX2, no AVX-512) this was
written on, every product shape measured ran faster through the OpenBLAS that numpy
ships, most at the one and eight rows of decoding: the lumenbase-128m head 1.5x at one
row and 3.2x at eight (`benchmarks/bench_blas.py`). On an Intel CPU MKL may well be the
faster one. So the choice is timed on this CPU, once per process, never assumed from
the vendor:

- `probe()` multiplies one and eight rows by the model's own decode weights both ways,
  interleaved, and picks numpy only when it is at least `MARGIN` times faster and its
  product equals torch's to float rounding. The weights must stream from memory as they
  do in decoding (`probe_bytes`: twice the last-level cache): with the MKL shim
  (`lumenlm.mkl_shim`) MKL won on 4 MB weights that stay in the cache, and lost on the
  real model (lumenbase-128m decode, numpy's 1.19x at one row and 1.33x at eight);
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
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from lumenlm import cpuinfo
from lumenlm.errors import ConfigError

ENV = "LUMENLM_BLAS"
"""auto (probe), torch, or numpy."""
CHOICES = ("auto", "torch", "numpy")
MARGIN = 1.2
"""numpy must be at least this many times faster in the probe to be chosen."""
CHECK_SHAPES = ((1, 512, 2048), (8, 512, 2048), (1, 2048, 512))
"""(rows, in, out) of the products whose values the probe compares first."""
PROBE_ROWS = (1, 8)
"""Rows of the probe's timed products: one sequence, and a batch."""
PROBE_MIN_BYTES = 64 << 20
"""The probe multiplies by at least this many bytes of weights (see `probe_bytes`)."""
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


def probe_bytes() -> int:
    """Bytes of weights the probe multiplies by: twice this CPU's last-level cache
    (`cpuinfo.last_level_cache_bytes`), at least `PROBE_MIN_BYTES`. Decoding a model
    of `STREAM_BYTES` or more reads every weight from memory once per token; a probe
    whose weights stayed in the cache would time a different kernel regime."""
    return max(PROBE_MIN_BYTES, 2 * cpuinfo.last_level_cache_bytes())


def _probe_weights(weights: Sequence[Tensor] | None, gen: torch.Generator) -> list[Tensor]:
    """`weights` from the first, until they reach `probe_bytes` or run out (a model that
    fits in the cache is timed in the cache, as it decodes); random (1024, 4096)
    matrices of that many bytes where no weights are given."""
    limit = probe_bytes()
    if weights is None:
        n = -(-limit // (1024 * 4096 * 4))
        return [torch.empty(1024, 4096).uniform_(-1, 1, generator=gen) for _ in range(n)]
    picked, total = [], 0
    for w in weights:
        picked.append(w)
        total += w.numel() * w.element_size()
        if total >= limit:
            break
    return picked


def probe(rounds: int = PROBE_ROUNDS, weights: Sequence[Tensor] | None = None) -> tuple[str, float]:
    """("numpy" or "torch", torch's time / numpy's time) for decode-shaped products:
    `PROBE_ROWS` rows by each of `weights` (2-D, (in, out), CPU float; see
    `_probe_weights`).

    Each round times every product once each way, alternating; the ratio is of each
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
    for r, k, n in CHECK_SHAPES:
        a, b = torch.randn(r, k, generator=gen), torch.randn(k, n, generator=gen)
        if not torch.allclose(numpy_mm(a, b), torch.mm(a, b), rtol=1e-4, atol=1e-4):
            return "torch", 0.0
    mats = _probe_weights(weights, gen)
    inputs = {
        (rows, k): torch.randn(rows, k, generator=gen, dtype=mats[0].dtype)
        for rows in PROBE_ROWS
        for k in {w.shape[0] for w in mats}
    }

    def once(fn: Callable[[Tensor, Tensor], Tensor]) -> float:
        start = _timer()
        for rows in PROBE_ROWS:
            for w in mats:
                fn(inputs[rows, w.shape[0]], w)
        return _timer() - start

    once(torch.mm), once(numpy_mm)  # warm-up: pages, thread pools
    t_torch, t_numpy = [], []
    for _ in range(rounds):
        t_torch.append(once(torch.mm))
        t_numpy.append(once(numpy_mm))
    ratio = min(t_torch) / max(min(t_numpy), 1e-12)
    return ("numpy" if ratio >= MARGIN else "torch"), ratio


def choice(weights: Sequence[Tensor] | None = None) -> str:
    """ "numpy" or "torch": `LUMENLM_BLAS` when set, else the probe over `weights` (run
    once per process: every model it is asked for streams its weights, see
    `STREAM_BYTES`)."""
    global _choice
    want = requested()
    if want != "auto":
        return want
    if _choice is None:
        _choice = probe(weights=weights)[0]
    return _choice


def parameter_bytes(module: torch.nn.Module) -> int:
    """Bytes of `module`'s parameters: what `STREAM_BYTES` is compared with."""
    return sum(p.numel() * p.element_size() for p in module.parameters())


def decode_choice(
    weights: Sequence[Tensor], model_bytes: int
) -> tuple[Callable[[Tensor, Tensor], Tensor], str]:
    """The 2-D product for decoding a model of `model_bytes` parameter bytes by
    `weights`, its (in, out) decode matrices in the order a step reads them, and why, in
    words (for reports). For CPU float32/float64: `LUMENLM_BLAS=numpy` gives `numpy_mm`
    at any size, `torch` gives `torch.mm`, and `auto` gives `numpy_mm` for a model of at
    least `STREAM_BYTES` when the probe over `weights` says numpy is faster. Anything
    else (a GPU, bf16, which numpy lacks) gets `torch.mm`."""
    first = weights[0]
    if first.device.type != "cpu" or first.dtype not in (torch.float32, torch.float64):
        return torch.mm, "torch's"
    want = requested()
    if want == "numpy":
        return numpy_mm, f"numpy's (OpenBLAS), forced by {ENV}=numpy"
    if want == "torch":
        return torch.mm, f"torch's, forced by {ENV}=torch"
    if model_bytes < STREAM_BYTES:
        return torch.mm, "torch's (model below blas.STREAM_BYTES)"  # no probe for small models
    if choice(weights) == "numpy":
        return numpy_mm, "numpy's (OpenBLAS), chosen by the probe"
    return torch.mm, "torch's, chosen by the probe"


def decode_mm(weights: Sequence[Tensor], model_bytes: int) -> Callable[[Tensor, Tensor], Tensor]:
    """`decode_choice`'s product."""
    return decode_choice(weights, model_bytes)[0]


def reset() -> None:
    """Forget the probe's choice and the thread setting (tests)."""
    global _choice, _threads
    _choice = _threads = None
