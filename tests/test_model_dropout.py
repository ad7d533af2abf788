"""lumenlm.model.dropout: the same distribution and scaling as F.dropout, masks fixed by
torch's seed, and a model whose training forward matches the plain SDPA path when
nothing is dropped."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

import lumenlm.model.dropout as dmod
from lumenlm.model import GPT
from lumenlm.model.dropout import Dropout, dropout, keep_mask
from lumenlm.presets import get_preset


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5, 0.9])
def test_kept_fraction_is_one_minus_p(p: float) -> None:
    torch.manual_seed(0)
    n = 400_000
    kept = keep_mask((n,), p).double().mean().item()
    assert abs(kept - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)


def test_elements_are_dropped_independently() -> None:
    # neighbours, and the same element in two calls, are both kept with probability (1-p)^2
    torch.manual_seed(1)
    p, n = 0.3, 400_000
    a, b = keep_mask((n,), p), keep_mask((n,), p)
    tol = 5 * math.sqrt(0.49 * 0.51 / n)
    assert abs((a[1:] & a[:-1]).double().mean().item() - 0.49) < tol
    assert abs((a & b).double().mean().item() - 0.49) < tol
    assert not torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_kept_values_are_scaled_as_f_dropout_scales_them(dtype: torch.dtype) -> None:
    torch.manual_seed(2)
    p = 0.1
    x = (torch.randn(64, 257) + 10).to(dtype)  # never 0, so 0 in the output means dropped
    # torch's CPU rounding: the scale held in the tensor's dtype (bf16 scales by 1.109375)
    expect = x * torch.tensor(1.0 / (1.0 - p), dtype=dtype)
    for out in (dropout(x, p, True), F.dropout(x, p, True)):  # ours, and torch's
        kept = out != 0
        assert out.dtype == dtype
        assert torch.equal(out[kept], expect[kept])
        assert 0.85 < kept.double().mean().item() < 0.95


def test_backward_multiplies_by_the_forward_mask() -> None:
    torch.manual_seed(3)
    p = 0.25
    x = torch.randn(32, 100, requires_grad=True)
    out = dropout(x, p, True)
    g = torch.randn_like(out)
    out.backward(g)
    kept = out.detach() != 0
    assert torch.equal(x.grad[~kept], torch.zeros_like(x.grad[~kept]))
    torch.testing.assert_close(x.grad[kept], g[kept] / (1 - p), rtol=1e-6, atol=0)


def test_masks_follow_torch_seed_and_rng_state() -> None:
    x = torch.ones(1000)
    torch.manual_seed(7)
    a = dropout(x, 0.5, True)
    torch.manual_seed(7)
    assert torch.equal(dropout(x, 0.5, True), a)
    state = torch.get_rng_state()
    b = dropout(x, 0.5, True)
    torch.set_rng_state(state)
    assert torch.equal(dropout(x, 0.5, True), b)
    assert not torch.equal(a, b)


def test_identity_outside_training_and_at_zero_and_zeros_at_one() -> None:
    x = torch.randn(8, 8)
    assert dropout(x, 0.5, False) is x
    assert dropout(x, 0.0, True) is x
    assert torch.equal(dropout(x, 1.0, True), torch.zeros_like(x))
    with pytest.raises(ValueError, match="between 0 and 1"):
        dropout(x, 1.5, True)


def test_module_is_an_nn_dropout() -> None:
    m = Dropout(0.3)
    assert isinstance(m, torch.nn.Dropout) and m.state_dict() == {}
    assert repr(m) == repr(torch.nn.Dropout(0.3))
    x = torch.randn(4, 4)
    assert m.eval()(x) is x


@pytest.mark.parametrize("name", ["librarian-1.3m", "lumiere-1m", "lumenbase-128m"])
def test_training_path_matches_sdpa_when_nothing_is_dropped(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CPU training with attention dropout takes the explicit attention path with
    `dropout`. With every element kept and a scale that rounds to 1 (p = 1e-9), its loss
    and gradients equal the SDPA path's without dropout (GQA included for lumenbase)."""
    small: dict = dict(n_layers=2, vocab_size=512, context_length=32)
    if name == "lumenbase-128m":
        small |= dict(d_model=128, n_heads=4, n_kv_heads=2, d_ff=256)
    cfg = dataclasses.replace(get_preset(name).model, **small)
    torch.manual_seed(0)
    model = GPT(cfg.with_dropout(1e-9)).train()
    ref = GPT(cfg.with_dropout(0.0)).train()
    ref.load_state_dict(model.state_dict())
    x = torch.randint(0, 512, (4, 32))
    y = torch.randint(0, 512, (4, 32))
    calls = []

    def all_kept(shape: torch.Size, p: float) -> torch.Tensor:
        calls.append(tuple(shape))
        return torch.ones(shape, dtype=torch.bool)

    monkeypatch.setattr(dmod, "keep_mask", all_kept)
    monkeypatch.setattr(dmod, "MIN_ELEMENTS", 1)
    monkeypatch.setattr(
        torch.nn.functional, "scaled_dot_product_attention", _sdpa_counter(ref_calls := [])
    )
    loss = model(x, y, return_logits=False).loss
    loss.backward()
    assert (4, cfg.n_heads, 32, 32) in calls and not ref_calls  # explicit path, our mask
    ref_loss = ref(x, y, return_logits=False).loss
    ref_loss.backward()
    assert ref_calls  # the reference ran SDPA
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    for (n, a), b in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=n)


def _sdpa_counter(calls: list) -> object:
    real = F.scaled_dot_product_attention

    def counted(*args: object, **kw: object) -> torch.Tensor:
        calls.append(1)
        return real(*args, **kw)  # type: ignore[arg-type]

    return counted


def test_cuda_compiled_and_small_tensors_use_torch_dropout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    big = torch.zeros(dmod.MIN_ELEMENTS)
    assert dmod.fast_path(big)
    assert not dmod.fast_path(torch.zeros(dmod.MIN_ELEMENTS - 1))
    assert not dmod.fast_path(torch.zeros(dmod.MIN_ELEMENTS, device="meta"))
    small = torch.randn(dmod.MIN_ELEMENTS - 1)
    torch.manual_seed(5)
    ours = dropout(small, 0.3, True)
    torch.manual_seed(5)
    assert torch.equal(ours, F.dropout(small, 0.3, True))  # torch's own mask
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not dmod.fast_path(big)
