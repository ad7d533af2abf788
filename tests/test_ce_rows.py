"""The C cross-entropy rows kernel (`lumenlm.ce_rows`) against torch's log-softmax.

Tolerance: the NLL within 1e-5 absolute (a polynomial exp and 8-lane sums; values of
order 1-10), the gradient within 1e-6 absolute (softmax entries below 1), the rank
exactly (a comparison). Rows are independent, so a row's bits do not depend on the
thread count or on the other rows. The chunked loss and scoring paths that call it
(`lumenlm.model.chunked_loss`) are checked with the kernel on and off in
tests/test_model_loss_chunked.py and tests/test_eval_chunked.py.
"""

from __future__ import annotations

import pytest
import torch

from lumenlm import ce_rows

pytestmark = pytest.mark.skipif(
    ce_rows.unavailable() is not None, reason=f"kernel unavailable: {ce_rows.unavailable()}"
)

VOCABS = [1, 7, 8, 15, 16, 33, 4096, 8000]


def _reference(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    nll = -torch.log_softmax(x, -1).gather(1, t[:, None]).squeeze(1)
    rank = (x > x.gather(1, t[:, None])).sum(-1)
    return nll, rank


@pytest.mark.parametrize("vocab", VOCABS)
def test_scores_equal_log_softmax_and_the_rank_is_exact(vocab: int) -> None:
    g = torch.Generator().manual_seed(vocab)
    x = torch.randn(37, vocab, generator=g) * 4
    x[3] = x[3].round()  # ties: the rank counts only strictly greater logits
    t = torch.randint(0, vocab, (37,), generator=g)
    nll, rank = ce_rows.scores(x, t)
    ref_nll, ref_rank = _reference(x, t)
    torch.testing.assert_close(nll, ref_nll, rtol=0, atol=1e-5)
    assert torch.equal(rank, ref_rank)


@pytest.mark.parametrize("vocab", VOCABS)
def test_grad_is_scaled_softmax_minus_onehot(vocab: int) -> None:
    g = torch.Generator().manual_seed(vocab)
    x = torch.randn(29, vocab, generator=g) * 4
    t = torch.randint(0, vocab, (29,), generator=g)
    scale = torch.rand(29, generator=g)
    scale[::5] = 0.0
    t[::5] = -100  # an ignored row's id is never read
    out = x.clone()
    nll = ce_rows.grad_(out, t, scale)
    safe = torch.where(scale > 0, t, 0)
    ref = torch.softmax(x, -1)
    ref.scatter_add_(1, safe[:, None], -torch.ones(29, 1))
    ref *= scale[:, None]
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    ref_nll = torch.where(scale > 0, _reference(x, safe)[0], 0.0)
    torch.testing.assert_close(nll, ref_nll, rtol=0, atol=1e-5)
    assert torch.equal(out[::5], torch.zeros_like(out[::5]))


def test_rows_of_a_wider_tensor_are_read_with_their_stride() -> None:
    x = torch.randn(10, 50)
    view = x[:, :41]  # row stride 50, unit column stride
    t = torch.randint(0, 41, (10,))
    assert ce_rows.usable(view, t)
    nll, rank = ce_rows.scores(view, t)
    ref_nll, ref_rank = _reference(view.contiguous(), t)
    torch.testing.assert_close(nll, ref_nll, rtol=0, atol=1e-5)
    assert torch.equal(rank, ref_rank)
    out = view.clone()
    scratch = x.clone()
    ce_rows.grad_(scratch[:, :41], t, torch.ones(10))
    ce_rows.grad_(out, t, torch.ones(10))
    assert torch.equal(scratch[:, :41], out)
    assert torch.equal(scratch[:, 41:], x[:, 41:])  # columns past the view untouched


def test_non_finite_logits_give_a_nan_nll_as_torch_does() -> None:
    x = torch.randn(5, 100)
    x[1, 5] = float("nan")
    x[2, 3] = float("inf")
    x[3, :] = float("-inf")
    x[4, 7] = float("-inf")  # one -inf logit is just a zero probability
    t = torch.tensor([0, 1, 2, 3, 4])
    nll, _ = ce_rows.scores(x, t)
    ref, _ = _reference(x, t)
    assert nll[1:4].isnan().all() and ref[1:4].isnan().all()
    torch.testing.assert_close(nll[[0, 4]], ref[[0, 4]], rtol=0, atol=1e-5)
    assert ce_rows.grad_(x.clone(), t, torch.ones(5))[1:4].isnan().all()


def test_a_target_out_of_range_is_an_error_naming_the_row() -> None:
    with pytest.raises(IndexError, match="target 10 at row 1"):
        ce_rows.scores(torch.randn(3, 10), torch.tensor([1, 10, 2]))
    with pytest.raises(IndexError, match="target -3 at row 2"):
        ce_rows.grad_(torch.randn(3, 10), torch.tensor([1, 0, -3]), torch.ones(3))


def test_a_row_gets_the_same_bits_on_any_thread_count_and_in_any_batch() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 8000, generator=g)  # large enough to be split over threads
    t = torch.randint(0, 8000, (64,), generator=g)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ce_rows.scores(x, t)
        torch.set_num_threads(max(2, before))
        many = ce_rows.scores(x, t)
    finally:
        torch.set_num_threads(before)
    alone = ce_rows.scores(x[17:18], t[17:18])
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])
    assert torch.equal(alone[0], one[0][17:18])


def test_usable_refuses_what_the_kernel_cannot_read(monkeypatch: pytest.MonkeyPatch) -> None:
    x, t = torch.randn(4, 9), torch.randint(0, 9, (4,))
    assert ce_rows.usable(x, t)
    assert not ce_rows.usable(x.double(), t)
    assert not ce_rows.usable(x.t(), t[:4].repeat(3)[:9])  # column stride != 1
    assert not ce_rows.usable(x, t.int())
    assert not ce_rows.usable(x.requires_grad_(), t)
    monkeypatch.setenv(ce_rows.ENV, "0")
    assert ce_rows.unavailable() == f"turned off by {ce_rows.ENV}"
    assert not ce_rows.usable(x.detach(), t)
