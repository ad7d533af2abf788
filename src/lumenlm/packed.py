"""A decode product of its own: few rows times a weight packed into 16-column panels.

Why: decoding a model too large for the CPU's caches multiplies 1-32 rows by every
weight once per token, so the product's speed is how fast it streams the weights from
memory. Neither BLAS torch and numpy ship does that well at these shapes on the 2-core
AMD EPYC (Zen 3, AVX2) this was written on: over the lumenbase-128m weights of one
decode step (490 MiB), MKL (with `lumenlm.mkl_shim`) took 44 ms at one row and 94 ms
at eight, OpenBLAS 29-35 and 62-65 ms, where the memory allows about 21-25 ms (a
500 MB `sum` read 17-20 GB/s). OpenBLAS at two to four rows (63-69 ms) was no faster
than at eight.

The kernel (`packed_mm.c`, compiled once with the system C compiler through
`lumenlm.cbuild`) keeps each weight as panels of 16 columns, `[N/16][K][16]`, so that
each thread reads one contiguous stretch of memory, and multiplies two to four rows per
pass over a panel with AVX2 FMAs (a single row goes over four panels at once: eight
independent accumulators, so the FMA latency does not bound it). Measured the same
way it took 22 ms at one row (the memory's speed), 36-40 ms at two to four, 46 ms at
eight and 76 ms at sixteen: 1.36x, 1.7-1.9x, 1.36x and 1.11x OpenBLAS's speed, 1.5-2.4x
MKL's (`benchmarks/bench_packed.py`); whole `generate` calls of lumenbase-128m ran 1.71x
(batch 1) and 1.74x (batch 8) faster than through MKL.

Its threads are torch's own: the library is linked against libgomp, which the dynamic
loader resolves to the copy torch already loaded, so one OpenMP pool serves both (a
process where that is not so, two OpenMP runtimes mapped, does not use the kernel).

It is the same fp32 product: each output is a sum over k in order, whatever the number
of rows, so it differs from MKL's and OpenBLAS's blocked sums by rounding only
(tests/test_packed.py: within 1e-5 of the largest entry against fp64), and a row gets
the same bits alone and in any batch (tested), as docs/SERVING.md wants of a request.
`lumenlm.blas` times it against the two BLAS libraries on the model's own weights and
uses it where it is the fastest; `lumenlm.model.decode_step` then stores the weights
packed instead of as (in, out) copies (the same memory).
"""

from __future__ import annotations

import ctypes
import functools
from importlib import resources

import torch
from torch import Tensor

from lumenlm import cbuild, cpuinfo

FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp")
"""Compiler flags: the kernel is written for AVX2 with FMA."""
PANEL = 16
"""Columns per panel (two AVX registers of fp32)."""


class PackedMatrix:
    """A (K, N) fp32 CPU matrix, packed in panels of `PANEL` columns (the last one
    padded with zeros), as `packed_mm` reads it."""

    def __init__(self, data: Tensor, k: int, n: int) -> None:
        self.data, self.k, self.n = data, k, n

    @property
    def shape(self) -> torch.Size:
        """(in, out), as the (in, out) matrix it stands for."""
        return torch.Size((self.k, self.n))

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str]:
    """(the kernel library, "") or (None, why it is unavailable)."""
    source = resources.files("lumenlm").joinpath("packed_mm.c").read_text()
    lib, why = cbuild.avx2_openmp_library("lumenlm_packed_mm", source, FLAGS, cpuinfo.read().flags)
    if lib is None:
        return None, why
    L, P = ctypes.c_long, ctypes.c_void_p
    lib.lumenlm_pack.argtypes = [P, L, L, P]
    lib.lumenlm_pack.restype = None
    lib.lumenlm_packed_mm.argtypes = [P, L, L, P, L, P, ctypes.c_int]
    lib.lumenlm_packed_mm.restype = None
    return lib, ""


def unavailable() -> str | None:
    """None when the kernel can be used in this process, else why not (a phrase)."""
    lib, why = _load()
    return None if lib is not None else why


def pack(w: Tensor) -> PackedMatrix:
    """`w` (K, N), any strides, fp32 on the CPU, packed for `packed_mm` (a new buffer of
    K x N rounded up to whole panels)."""
    lib, why = _load()
    if lib is None:
        raise RuntimeError(f"the packed kernel is unavailable here: {why}")
    if w.dim() != 2 or w.dtype != torch.float32 or w.device.type != "cpu":
        raise ValueError(f"pack takes a 2-D fp32 CPU matrix, got {tuple(w.shape)} {w.dtype}")
    w = w.detach().contiguous()
    k, n = w.shape
    data = torch.empty(-(-n // PANEL) * PANEL * k, dtype=torch.float32)
    lib.lumenlm_pack(w.data_ptr(), k, n, data.data_ptr())
    return PackedMatrix(data, k, n)


def packed_mm(x: Tensor, w: PackedMatrix) -> Tensor:
    """`x @ w` for x (M, K) fp32 on the CPU (no gradient): a new (M, N) tensor, on
    torch's intra-op thread count."""
    lib, why = _load()
    if lib is None:
        raise RuntimeError(f"the packed kernel is unavailable here: {why}")
    if x.dim() != 2 or x.shape[1] != w.k or x.dtype != torch.float32:
        raise ValueError(f"packed_mm: x {tuple(x.shape)} {x.dtype} does not fit ({w.k}, {w.n})")
    x = x.contiguous()
    y = torch.empty(x.shape[0], w.n, dtype=torch.float32)  # whatever the default dtype
    lib.lumenlm_packed_mm(
        x.data_ptr(), x.shape[0], w.k, w.data.data_ptr(), w.n, y.data_ptr(),
        torch.get_num_threads(),
    )  # fmt: skip
    return y
