"""A small model's whole decode step in one C call (`small_step.c`).

Why: a decode step of a 1M-parameter model does about 2.4 MFLOP per row, microseconds
of arithmetic, yet the eager step (`lumenlm.model.decode_step`, about 90 torch ops for
lumiere-1m) spends 1-2 ms on each token in per-op dispatch, allocation and Python. The
peers pay more (HF `generate` 2-5x that). Written as one C function over the decode
layout's (in, out) weight copies, the step does the same operations in the same order
with no dispatch at all; only the summation order of the products differs from torch's
BLAS, so logits agree to float rounding (tests/test_small_step.py compares with
`GPT.forward` for every layout the model has), and every row's sums run over its own
inputs in order, so a row gets the same bits alone and in any batch.

It is used for fp32 CPU models of at most `SMALL_BYTES` (whose weights sit in the
caches, where per-op cost is what bounds a step; larger models stream their weights
from memory and go through `lumenlm.blas`'s products), by the eager decode step only
(a compiled step keeps torch's ops), and not where `LUMENLM_SMALL_STEP=0` or a forced
`LUMENLM_BLAS` says otherwise. The library is compiled once with the system C compiler
(`lumenlm.cbuild`); without one, or off x86-64 Linux, the torch step runs as before.
Threads are torch's own OpenMP pool (libgomp, as `lumenlm.packed`); a product wakes
them only when it is large enough to pay for it.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from collections.abc import Sequence
from importlib import resources

import torch
from torch import Tensor

from lumenlm import cbuild, cpuinfo

FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-ffp-contract=fast")
"""Compiler flags: vectorized for AVX2 with FMA (the products' inner loops)."""
SMALL_BYTES = 64 << 20
"""Models of at most this many parameter bytes decode through the C step."""
ENV = "LUMENLM_SMALL_STEP"
"""0 (or off) turns the C step off: every step runs torch's ops."""

NORM_KINDS = {"identity": 0, "layernorm": 1, "rmsnorm": 2}
ACTIVATIONS = {"gelu": 0, "gelu_tanh": 1, "swiglu": 2}

_P, _L = ctypes.c_void_p, ctypes.c_long


class _Lin(ctypes.Structure):
    _fields_ = [("w", _P), ("b", _P), ("k", _L), ("n", _L)]


class _Norm(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int), ("w", _P), ("b", _P), ("eps", ctypes.c_float)]


class _Layer(ctypes.Structure):
    _fields_ = [(name, _Norm) for name in ("attn_norm", "mlp_norm")] + [
        (name, _Lin) for name in ("qkv", "o", "up", "down")
    ]


class _Net(ctypes.Structure):
    _fields_ = [
        *((name, _L) for name in (
            "d_model", "n_layers", "n_heads", "n_kv", "d_head", "d_value", "d_ff", "vocab")),
        ("pre_norm", ctypes.c_int), ("act", ctypes.c_int),
        ("emb", _P), ("pos", _P), ("cos", _P), ("sin", _P), ("layers", _P),
        ("final_norm", _Norm), ("head", _Lin),
    ]  # fmt: skip


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str]:
    """(the library, "") or (None, why it is unavailable)."""
    source = resources.files("lumenlm").joinpath("small_step.c").read_text()
    lib, why = cbuild.avx2_openmp_library("lumenlm_small_step", source, FLAGS, cpuinfo.read().flags)
    if lib is None:
        return None, why
    lib.lumenlm_small_step_scratch.argtypes = [_P, _L, _L]
    lib.lumenlm_small_step_scratch.restype = _L
    lib.lumenlm_small_step.argtypes = [
        _P, _L, _P, _P, _L, _P, _L, ctypes.c_int, _P, _P, _L, _L, _L, _L, _L, _L, _P, _P,
        ctypes.c_int,
    ]  # fmt: skip
    lib.lumenlm_small_step.restype = None
    return lib, ""


def unavailable() -> str | None:
    """None when the C step can run in this process, else why not (a phrase)."""
    if cbuild.turned_off(ENV):
        return f"turned off by {ENV}"
    return _load()[1] or None


Norm = tuple[str, Tensor | None, Tensor | None, float]
"""("layernorm" | "rmsnorm" | "identity", weight, bias, eps), as the decode layout's."""
Linear = tuple[Tensor, Tensor | None]
"""An (in, out) contiguous fp32 weight and its bias."""


class SmallStep:
    """A model's decode-layout weights, held for the C step; call it as the torch step.

    `layers`: per block (attn_norm, qkv, o, mlp_norm, up, down), each product one fused
    (in, out) matrix (q|k|v; SwiGLU's gate|up). The tensors are kept referenced here, so
    the pointers the C structures hold stay valid for this object's life.
    """

    def __init__(
        self,
        dims: dict[str, int],
        activation: str,
        pre_norm: bool,
        emb: Tensor,
        pos: Tensor | None,
        rope: tuple[Tensor, Tensor] | None,
        layers: Sequence[tuple[Norm, Linear, Linear, Norm, Linear, Linear]],
        final_norm: Norm,
        head: Linear,
    ) -> None:
        lib, why = _load()
        if lib is None:
            raise RuntimeError(f"the small-model step is unavailable here: {why}")
        self._lib, self._keep = lib, []  # type: ignore[var-annotated]
        self.dims = dims
        self.vocab = dims["vocab"]
        self._c_layers = (_Layer * len(layers))(*(
            _Layer(self._norm(an), self._norm(mn), self._lin(q), self._lin(o), self._lin(u),
                   self._lin(d))
            for an, q, o, mn, u, d in layers))  # fmt: skip
        self._net = _Net(
            **dims, pre_norm=int(pre_norm), act=ACTIVATIONS[activation],
            emb=self._ptr(emb), pos=self._ptr(pos),
            cos=self._ptr(rope[0] if rope else None), sin=self._ptr(rope[1] if rope else None),
            layers=ctypes.addressof(self._c_layers), final_norm=self._norm(final_norm),
            head=self._lin(head),
        )  # fmt: skip
        self._address = ctypes.addressof(self._net)
        self._local = threading.local()  # a scratch buffer per thread: the call drops the GIL

    def _ptr(self, t: Tensor | None) -> int | None:
        if t is None:
            return None
        t = t.detach().contiguous()
        if t.dtype != torch.float32 or t.device.type != "cpu":
            raise ValueError(f"the small-model step takes fp32 CPU tensors, got {t.dtype}")
        self._keep.append(t)
        return t.data_ptr()

    def _norm(self, n: Norm) -> _Norm:
        kind, w, b, eps = n
        return _Norm(NORM_KINDS[kind], self._ptr(w), self._ptr(b), eps)

    def _lin(self, lin: Linear) -> _Lin:
        w, b = lin
        if w.dim() != 2 or not w.is_contiguous():
            raise ValueError("the small-model step takes (in, out) contiguous weights")
        return _Lin(self._ptr(w), self._ptr(b), w.shape[0], w.shape[1])

    def __call__(
        self,
        tokens: Tensor,
        positions: Tensor,
        column: Tensor,
        key_mask: Tensor,
        k: Tensor,
        v: Tensor,
        keys: int | None = None,
    ) -> Tensor:
        """`DecodeStep`'s call: logits (rows, vocab) for one new token per row, its keys
        and values written into `k`/`v` at `column` (see `DecodeStep`)."""
        B, S = tokens.shape[0], k.shape[3]
        keys = S if keys is None else keys
        mask = key_mask if key_mask.dim() == 2 else key_mask[:, 0, 0]
        if (
            mask.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1
            or k.stride(2) != S * k.shape[4] or v.stride(2) != S * v.shape[4]
            or k.stride(3) != k.shape[4] or v.stride(3) != v.shape[4]
            or tokens.dtype != torch.int64 or positions.dtype != torch.int64
            or mask.dtype not in (torch.float32, torch.bool)
        ):  # fmt: skip
            raise ValueError("the small-model step takes row-major caches and masks, int64 ids")
        tokens, positions = tokens.contiguous(), positions.contiguous()
        lib = self._lib
        need = lib.lumenlm_small_step_scratch(self._address, B, keys)
        scratch = getattr(self._local, "scratch", None)
        if scratch is None or scratch.numel() < need:
            scratch = self._local.scratch = torch.empty(need, dtype=torch.float32)
        logits = torch.empty(B, self.vocab, dtype=torch.float32)
        lib.lumenlm_small_step(
            self._address, B, tokens.data_ptr(), positions.data_ptr(),
            int(column[0]), mask.data_ptr(), mask.stride(0), int(mask.dtype == torch.bool),
            k.data_ptr(), v.data_ptr(), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            S, keys, logits.data_ptr(), scratch.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        return logits
