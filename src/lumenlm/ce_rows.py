"""Cross-entropy over rows of fp32 logits in one C pass per row (`ce_rows.c`).

Why: in a small model the vocabulary head is most of a step (librarian-1.3m: 4096 rows
x 8000 logits per batch), and after its product torch spends a fifth of the head's
time in element-wise kernels: log-softmax, gather, exp, scatter, and for evaluation the
rank's comparison and row sum, each streaming the whole chunk of logits through
memory. The C kernel does a row's work while the row sits in the core's cache:

- `scores(logits, targets)`: per row the target's NLL and rank (evaluation);
- `grad_(logits, targets, scale)`: per row the NLL, and the logits overwritten with
  scale * (softmax - onehot(target)), the loss's gradient (training).

Results equal torch's to float rounding (a polynomial exp and 8-lane sums), never bit
for bit; `lumenlm.model.chunked_loss` states the tolerance and its tests check it. A
NaN or +inf logit gives a NaN NLL, as torch's log-softmax does. Used for contiguous
fp32 CPU logits on x86-64 Linux with AVX2/FMA and a C compiler (`lumenlm.cbuild`),
unless `LUMENLM_CE_ROWS=0`; elsewhere the callers run torch's ops as before.
"""

from __future__ import annotations

import ctypes
import functools
from importlib import resources

import torch
from torch import Tensor

from lumenlm import cbuild, cpuinfo

FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp")
"""Compiler flags: AVX2 with FMA intrinsics, OpenMP over rows."""
ENV = "LUMENLM_CE_ROWS"
"""0 (or off) turns the kernel off: the callers run torch's element-wise ops."""

_P, _L = ctypes.c_void_p, ctypes.c_long


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str]:
    """(the library, "") or (None, why it is unavailable)."""
    source = resources.files("lumenlm").joinpath("ce_rows.c").read_text()
    lib, why = cbuild.avx2_openmp_library("lumenlm_ce_rows", source, FLAGS, cpuinfo.read().flags)
    if lib is None:
        return None, why
    for fn in (lib.lumenlm_ce_scores, lib.lumenlm_ce_grad):  # the same signature
        fn.argtypes = [_P, _L, _L, _L, _P, _P, _P, ctypes.c_int]
        fn.restype = _L
    return lib, ""


def unavailable() -> str | None:
    """None when the kernel can run in this process, else why not (a phrase)."""
    if cbuild.turned_off(ENV):
        return f"turned off by {ENV}"
    return _load()[1] or None


def usable(logits: Tensor, targets: Tensor) -> bool:
    """Whether `scores`/`grad_` take these: fp32 (rows, V) CPU logits with unit column
    stride, int64 (rows,) CPU targets, not under torch.compile (inductor fuses torch's
    ops itself), and the kernel available."""
    return (
        logits.device.type == "cpu"
        and logits.dtype == torch.float32
        and logits.dim() == 2
        and logits.stride(1) == 1
        and targets.device.type == "cpu"
        and targets.dtype == torch.int64
        and targets.shape == logits.shape[:1]
        and not logits.requires_grad
        and not torch.compiler.is_compiling()
        and unavailable() is None
    )


def _call(name: str, logits: Tensor, targets: Tensor, *out: int) -> None:
    """The C function `name` over (logits, targets) with the output pointers `out`; an
    IndexError naming a row whose target is out of range (the last such row)."""
    lib, _ = _load()
    assert lib is not None, "call usable() first"
    rows, v = logits.shape
    t = targets.contiguous()
    fn = getattr(lib, name)
    bad = fn(
        logits.data_ptr(), rows, v, logits.stride(0), t.data_ptr(), *out, torch.get_num_threads()
    )
    if bad:
        raise IndexError(
            f"target {int(t[bad - 1])} at row {bad - 1} is out of range for "
            f"{v} logits; the token ids must be below the vocabulary size"
        )


def scores(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """(NLL fp32, rank int64) per row of `logits` against `targets` (see `usable`)."""
    nll = torch.empty(logits.shape[0], dtype=torch.float32)
    rank = torch.empty(logits.shape[0], dtype=torch.int64)
    _call("lumenlm_ce_scores", logits, targets, nll.data_ptr(), rank.data_ptr())
    return nll, rank


def grad_(logits: Tensor, targets: Tensor, scale: Tensor) -> Tensor:
    """In place: each row of `logits` becomes scale[r] * (softmax - onehot(target));
    returns the NLL per row (fp32; 0 where scale is 0, whatever that row's target)."""
    sc = scale.to(torch.float32).contiguous()
    nll = torch.empty(logits.shape[0], dtype=torch.float32)
    _call("lumenlm_ce_grad", logits, targets, sc.data_ptr(), nll.data_ptr())
    return nll
