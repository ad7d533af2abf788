"""Which product multiplies the decode step's CPU matrices: torch's own BLAS (MKL),
numpy's (OpenBLAS), or lumenlm's packed kernel (`lumenlm.packed`), measured.

Why: torch's x86 wheels run fp32 matrix products through Intel MKL, which is built for
large products. Decoding multiplies a few rows by every weight, once per token. On the
2-core AMD EPYC (Zen 3, AVX2, no AVX-512) this was written on, one decode step of
lumenbase-128m (490 MiB of weights) took 44 ms of products through MKL (with
`lumenlm.mkl_shim`) at one row and 94 ms at eight, 29 and 62 ms through the OpenBLAS
that numpy ships, and 22 and 46 ms through the packed kernel (`benchmarks/bench_packed.py`).
Without the shim, MKL was slower still. On another CPU the order may differ. So the
choice is timed on this CPU, once per process, never assumed from the vendor:

- `probe()` multiplies one and eight rows by the model's own decode weights each way
  (torch's, numpy's, and the packed kernel's where it builds), in blocks (see there),
  and picks the fastest other than torch's only when it is at least `MARGIN` times
  faster than torch's and its product equals torch's to float rounding. The weights
  stream from memory as they do in decoding (`probe_bytes`: twice the last-level
  cache). The probe before (4 MB weights, torch's and numpy's calls alternating) chose
  MKL in 5 of 5 runs with the MKL shim (`lumenlm.mkl_shim`), while lumenbase-128m then
  decoded 1.19x faster at one row and 1.33x at eight through numpy's; the same weights
  timed in blocks chose the packed kernel in 5 of 5 (`benchmarks/bench_blas.py --probe`);
- `LUMENLM_BLAS=torch` uses torch's only; `numpy` or `packed` uses that one for every
  model size, without a probe (to compare); `auto`, the default, probes for large models.

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
import itertools
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lumenlm import cpuinfo, packed
from lumenlm.errors import ConfigError

ENV = "LUMENLM_BLAS"
"""auto (probe), torch, numpy or packed."""
CHOICES = ("auto", "torch", "numpy", "packed")
MARGIN = 1.2
"""numpy's or the packed kernel's product must be at least this many times faster than
torch's in the probe to be chosen."""
CHECK_SHAPES = ((1, 512, 2048), (8, 512, 2048), (1, 2048, 512))
"""(rows, in, out) of the products whose values the probe compares first."""
PROBE_ROWS = (1, 8)
"""Rows of the probe's timed products: one sequence, and a batch."""
PROBE_MIN_BYTES = 64 << 20
"""The probe multiplies by at least this many bytes of weights (see `probe_bytes`)."""
PROBE_ROUNDS = 3
"""Timed calls per side in each of the probe's `PROBE_BLOCKS`; each side's best counts."""
PROBE_BLOCKS = 2
"""Times the probe goes through the sides (see `probe`)."""
STREAM_BYTES = 128 << 20
"""With `auto`, models with at least this many parameter bytes decode through numpy's BLAS
or the packed kernel when the probe finds one faster. They stream every weight from
memory for each token, so the product's throughput is the step's speed: lumenbase-128m
(490 MiB) decoded 1.71x (one row) and 1.74x (eight) faster through the packed kernel
than through MKL. Smaller models' steps are bound by the cost per op: with numpy's, the
second thread pool cost more than the products gained (whole generate calls of
librarian-1.3m and lumiere-1m at 0.30-0.97x, benchmarks/RESULTS.md, "Which BLAS
multiplies"), and the packed kernel, forced, ranged from 0.84x to 1.34x."""

MatMul = Callable[[Tensor, Any], Tensor]
"""A decode product: `torch.mm`, `numpy_mm` (both on (in, out) matrices) or
`packed.packed_mm` (on `packed.PackedMatrix`)."""

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


def _probe_weights(weights: Iterable[Tensor] | None, gen: torch.Generator) -> list[Tensor]:
    """`weights` from the first, until they reach `probe_bytes` or run out (a model that
    fits in the cache is timed in the cache, as it decodes); random (1024, 4096)
    matrices of that many bytes where no weights are given."""
    limit = probe_bytes()
    if weights is None:
        n = -(-limit // (1024 * 4096 * 4))
        shape = (1024, 4096)
        return [
            torch.empty(shape, dtype=torch.float32).uniform_(-1, 1, generator=gen) for _ in range(n)
        ]
    picked, total = [], 0
    for w in weights:
        picked.append(w)
        total += w.numel() * w.element_size()
        if total >= limit:
            break
    return picked


def _packed_product() -> Callable[[Tensor, Tensor], Tensor]:
    """`packed.packed_mm` on a matrix packed at first use (the probe's weights)."""
    cache: dict[int, packed.PackedMatrix] = {}

    def mm(a: Tensor, b: Tensor) -> Tensor:
        p = cache.get(id(b))
        if p is None:
            p = cache[id(b)] = packed.pack(b)
        return packed.packed_mm(a, p)

    return mm


def _timed(name: str, fn: MatMul, mats: list[Tensor], inputs: dict) -> float:
    """Seconds for one pass of `PROBE_ROWS` rows by every matrix in `mats` through `fn`
    (`name`: the side's, for tests that script the durations)."""
    start = _timer()
    for rows in PROBE_ROWS:
        for w in mats:
            fn(inputs[rows, w.shape[0]], w)
    return _timer() - start


def _agrees(fn: MatMul, checks: list[tuple[Tensor, Tensor]]) -> bool:
    """Whether `fn` gives torch's products to float rounding; an error counts as no (an
    optional product must never stop a decode)."""
    try:
        return all(
            torch.allclose(fn(a, b), torch.mm(a, b), rtol=1e-4, atol=1e-4) for a, b in checks
        )
    except (RuntimeError, ValueError, OSError):
        return False


def probe(rounds: int = PROBE_ROUNDS, weights: Iterable[Tensor] | None = None) -> tuple[str, float]:
    """("torch", "numpy" or "packed"; torch's time / the best other's time) for
    decode-shaped products: `PROBE_ROWS` rows by each of `weights` (2-D, (in, out), CPU
    fp32; see `_probe_weights`). The packed kernel takes part where it is available.

    The sides are timed in blocks: one warm-up call, then `rounds` timed calls, side
    after side (numpy's under `numpy_threads`, as the step runs it), and the whole
    cycle `PROBE_BLOCKS` times; each side's best call counts. Blocks, because the
    libraries' idle threads spin for a while after a call (OpenBLAS's, torch's OpenMP
    pool): alternating call by call, each side ran in the other's spin and the packed
    kernel's calls took 20-115 ms for the same 9 ms of work on the 2-core EPYC. Best
    calls, because on a shared host a slow spell lengthens some calls and never
    shortens one, and two cycles, so that a spell cannot cover one side's every call.
    A product that differs from torch's beyond float rounding (a broken or mismatched
    library) is refused, whatever its speed.
    """
    set_threads(torch.get_num_threads())
    gen = torch.Generator().manual_seed(0)
    f32 = torch.float32
    checks = [
        (torch.randn(r, k, generator=gen, dtype=f32), torch.randn(k, n, generator=gen, dtype=f32))
        for r, k, n in CHECK_SHAPES
    ]
    others: dict[str, MatMul] = {"numpy": numpy_mm}
    if packed.unavailable() is None:
        others["packed"] = _packed_product()
    sides: dict[str, MatMul] = {"torch": torch.mm}
    for name, fn in others.items():
        if _agrees(fn, checks):
            sides[name] = fn
    if len(sides) == 1:
        return "torch", 0.0
    mats = _probe_weights(weights, gen)
    inputs = {
        (rows, k): torch.randn(rows, k, generator=gen, dtype=mats[0].dtype)
        for rows in PROBE_ROWS
        for k in {w.shape[0] for w in mats}
    }
    best = dict.fromkeys(sides, float("inf"))
    for _ in range(PROBE_BLOCKS):
        for name, fn in sides.items():
            with numpy_threads() if name == "numpy" else contextlib.nullcontext():
                _timed(name, fn, mats, inputs)  # warm-up: the other side's threads settle
                for _ in range(rounds):
                    best[name] = min(best[name], _timed(name, fn, mats, inputs))
    other = min((n for n in best if n != "torch"), key=lambda n: best[n])
    ratio = best["torch"] / max(best[other], 1e-12)
    return (other if ratio >= MARGIN else "torch"), ratio


def choice(weights: Iterable[Tensor] | None = None) -> str:
    """ "torch", "numpy" or "packed": `LUMENLM_BLAS` when set, else the probe over
    `weights` (run once per process: every model it is asked for streams its weights,
    see `STREAM_BYTES`)."""
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


NAMES = {
    "numpy": "numpy's (OpenBLAS)",
    "packed": "lumenlm's packed kernel (lumenlm.packed)",
}


def decode_choice(
    weights: Iterable[Tensor],
    model_bytes: int,
    packed_ok: bool = True,
    sample: Tensor | None = None,
) -> tuple[MatMul, str]:
    """The product for decoding a model of `model_bytes` parameter bytes by `weights`,
    its (in, out) decode matrices in the order a step reads them (an iterable: the probe
    takes only the first `probe_bytes`, and only once per process), and why, in words
    (for reports). For CPU float32: `LUMENLM_BLAS=numpy` or `packed` gives that product
    at any size, `torch` gives `torch.mm`, and `auto` gives what the probe over
    `weights` finds fastest for a model of at least `STREAM_BYTES`. Anything else (a
    GPU, bf16, which numpy and the kernel lack) gets `torch.mm`. `packed_ok=False`
    (a step that keeps no copies of its weights) leaves the packed kernel out. `sample`:
    a tensor with the weights' device and dtype, so that a lazy `weights` is not read at
    all when no probe runs (else its first matrix is)."""
    it = iter(weights)
    first = sample if sample is not None else next(it)
    if first.device.type != "cpu" or first.dtype != torch.float32:
        return torch.mm, "torch's"
    want = requested()
    if want == "torch":
        return torch.mm, f"torch's, forced by {ENV}=torch"
    if want != "auto":
        why = packed.unavailable() if want == "packed" else None
        if want == "packed" and (why or not packed_ok):
            why = why or "the step keeps no copies of its weights"
            return torch.mm, f"torch's ({ENV}=packed, but the packed kernel is not used: {why})"
        return _product(want), f"{NAMES[want]}, forced by {ENV}={want}"
    if model_bytes < STREAM_BYTES:
        return torch.mm, "torch's (model below blas.STREAM_BYTES)"  # no probe for small models
    picked = choice(it if sample is not None else itertools.chain([first], it))
    if picked == "packed" and not packed_ok:
        return (
            numpy_mm,
            f"{NAMES['numpy']} (the probe chose the packed kernel, but the step keeps no copies)",
        )
    if picked != "torch":
        return _product(picked), f"{NAMES[picked]}, chosen by the probe"
    return torch.mm, "torch's, chosen by the probe"


def _product(name: str) -> MatMul:
    return numpy_mm if name == "numpy" else packed.packed_mm


def decode_mm(weights: Iterable[Tensor], model_bytes: int) -> MatMul:
    """`decode_choice`'s product."""
    return decode_choice(weights, model_bytes)[0]


def reset() -> None:
    """Forget the probe's choice and the thread setting (tests)."""
    global _choice, _threads
    _choice = _threads = None
