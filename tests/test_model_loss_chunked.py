"""Chunked linear + cross-entropy equals the plain `lm_head` + F.cross_entropy path.

Tolerance: fp32, loss and gradients within rtol 1e-5 / atol 1e-6 (relative to values of
order 1e-1..1e-4): the sums are only reordered (chunk by chunk instead of all at once).
Under bf16 autocast the two paths use the same bf16 matmuls and fp32 log-sum-exp, so the
loss agrees to bf16 rounding of the gradients (rtol 2e-2).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lumenlm.config import ModelConfig
from lumenlm.model import GPT
from lumenlm.model.chunked_loss import chunk_rows_for, linear_cross_entropy

RTOL, ATOL = 1e-5, 1e-6

pytestmark = pytest.mark.usefixtures("ce_kernel")


def _plain(h, w, b, t, ignore_index=-100):
    logits = F.linear(h, w, b)
    return F.cross_entropy(
        logits.float().view(-1, logits.shape[-1]), t.reshape(-1), ignore_index=ignore_index
    )


def _grads(fn, h, w, b, t):
    h = h.detach().clone().requires_grad_(True)
    w = w.detach().clone().requires_grad_(True)
    b = b.detach().clone().requires_grad_(True) if b is not None else None
    loss = fn(h, w, b, t)
    (loss * 3.0).backward()  # a non-unit incoming gradient, as grad accumulation gives
    return loss.detach(), h.grad, w.grad, b.grad if b is not None else None


@pytest.mark.parametrize(
    ("shape", "vocab", "dim", "chunk", "bias", "ignore"),
    [
        ((4, 16), 50, 8, 7, False, False),  # chunk does not divide the 64 rows
        ((4, 16), 50, 8, 7, True, True),
        ((2, 33), 257, 16, 16, True, False),
        ((3, 10), 1000, 32, 1, False, True),  # one row per chunk
        ((3, 10), 1000, 32, 1000, True, True),  # one chunk for everything
        ((1, 5), 11, 4, None, True, True),  # the default chunk size
    ],
)
def test_loss_and_gradients_equal_plain_fp32(shape, vocab, dim, chunk, bias, ignore) -> None:
    g = torch.Generator().manual_seed(sum(shape) + vocab)
    h = torch.randn(*shape, dim, generator=g)
    w = torch.randn(vocab, dim, generator=g) * 0.3
    b = torch.randn(vocab, generator=g) * 0.1 if bias else None
    t = torch.randint(0, vocab, shape, generator=g)
    if ignore:
        t[torch.rand(shape, generator=g) < 0.4] = -100

    def chunked(h, w, b, t):
        return linear_cross_entropy(h, w, b, t, chunk_rows=chunk)

    ref = _grads(_plain, h, w, b, t)
    got = _grads(chunked, h, w, b, t)
    for r, c in zip(ref, got):
        if r is None:
            assert c is None
            continue
        torch.testing.assert_close(c, r, rtol=RTOL, atol=ATOL)


def test_custom_ignore_index_and_no_grad_path_equal_plain() -> None:
    g = torch.Generator().manual_seed(3)
    h, w = torch.randn(40, 12, generator=g), torch.randn(90, 12, generator=g)
    t = torch.randint(0, 90, (40,), generator=g)
    t[::3] = 7  # 7 is ignored here, not -100
    ref = _plain(h, w, None, t, ignore_index=7)
    with torch.no_grad():
        got = linear_cross_entropy(h, w, None, t, ignore_index=7, chunk_rows=9)
    torch.testing.assert_close(got, ref, rtol=RTOL, atol=ATOL)


def test_no_trained_target_gives_zero_loss_and_zero_gradients() -> None:
    h = torch.randn(6, 4, requires_grad=True)
    w = torch.randn(10, 4, requires_grad=True)
    loss = linear_cross_entropy(h, w, None, torch.full((6,), -100), chunk_rows=4)
    loss.backward()
    assert loss.item() == 0.0
    assert not h.grad.any() and not w.grad.any()


def test_bf16_autocast_matches_plain_autocast() -> None:
    g = torch.Generator().manual_seed(5)
    h, w = torch.randn(64, 32, generator=g), torch.randn(300, 32, generator=g) * 0.2
    b = torch.randn(300, generator=g) * 0.1
    t = torch.randint(0, 300, (64,), generator=g)
    t[:10] = -100
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = _grads(_plain, h, w, b, t)
        got = _grads(lambda *a: linear_cross_entropy(*a, chunk_rows=20), h, w, b, t)
    for r, c in zip(ref, got):
        assert c.dtype == r.dtype
        torch.testing.assert_close(c, r, rtol=2e-2, atol=2e-3)


def _model(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=97, context_length=16, d_model=16, n_layers=2, n_heads=2)
    return GPT(ModelConfig(**{**cfg, **kw}))


@pytest.mark.parametrize(
    "kw",
    [
        {"tie_embeddings": True},
        {"tie_embeddings": False, "lm_head_bias": True},
    ],
)
def test_gpt_forward_without_logits_equals_plain(kw) -> None:
    """GPT.forward(..., return_logits=False): same loss and parameter gradients (the
    tied weight gets both the embedding's and the head's share), logits None."""
    model = _model(**kw)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 97, (3, 16), generator=g)
    y = torch.randint(0, 97, (3, 16), generator=g)
    y[0, :5] = -100
    grads = []
    for fast in (False, True):
        model.zero_grad()
        out = model(x, y, return_logits=not fast)
        assert (out.logits is None) == fast
        out.loss.backward()
        grads.append((out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (l0, g0), (l1, g1) = grads
    torch.testing.assert_close(l1, l0, rtol=RTOL, atol=ATOL)
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-6, msg=name)


def test_chunk_rows_for_keeps_at_least_one_row() -> None:
    assert chunk_rows_for(10**9, min_rows=1) == 1
    assert chunk_rows_for(8000, 8000 * 5, min_rows=1) == 5
    assert chunk_rows_for(8000, 8000 * 5) == 256
