"""The small-model C step (`lumenlm.small_step`) against the plain path (`GPT.forward`).

Stated tolerance: every step's logits within `FP32_RTOL` (1e-5) of the plain path's,
relative to the largest |logit| of that step, and greedy tokens identical, for every
layout the model has (GPT-2 with biases and exact GELU, Lumiere's RMSNorm + SwiGLU +
learned positions, Llama with GQA and RoPE, post-norm, d_value != d_head, tanh GELU,
LayerNorm without bias), with and without left padding, across context slides; the
server's engine with rows joining and leaving. A row gets the same bits alone and in
any batch, on one thread or two. Where the C step cannot run (no compiler), the tests
that need it skip with the reason.
"""

from __future__ import annotations

import pytest
import torch

from infer_helpers import (  # noqa: F401 (fixture)
    CASES,
    FP32_RTOL,
    PROMPTS,
    _one_thread,
    batch_engine_tokens,
    decode_logits,
    make_model,
    model_for,
    rel_err,
)
from lumenlm import blas, cbuild, small_step
from lumenlm.infer import generate
from lumenlm.infer.engine import Decoder
from lumenlm.model import decode_step as decode_mod
from lumenlm.model.decode_step import DecodeStep

MORE_CASES = {
    **CASES,
    "gelu-tanh": ("tiny-gpt2", {"activation": "gelu_tanh"}),
    "layernorm-no-bias": ("tiny-gpt2", {"norm_bias": False, "attn_bias": False}),
    "lumiere-rope-gqa": ("lumiere-1m", {"n_layers": 2, "d_model": 64, "d_ff": 96,
                                        "positions": "rope", "n_kv_heads": 2}),
}  # fmt: skip


@pytest.fixture(autouse=True)
def _need_c_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(small_step.ENV, raising=False)
    monkeypatch.delenv(blas.ENV, raising=False)
    why = small_step.unavailable()
    if why is not None:
        pytest.skip(f"the small-model C step is unavailable here: {why}")


def _model(case: str):
    preset, overrides = MORE_CASES[case]
    return make_model(preset, **overrides)


def test_small_fp32_cpu_models_take_the_c_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """It is chosen for small fp32 CPU models, and not when turned off, when a product is
    forced by LUMENLM_BLAS, for a compiled step, in bf16, or past `SMALL_BYTES`."""
    model = _model("lumiere")
    step = DecodeStep(model)
    assert step._small is not None and step.blas == decode_mod.SMALL_NOTE
    assert DecodeStep(model)._small is step._small  # made once per set of weights
    monkeypatch.setenv(small_step.ENV, "0")
    assert DecodeStep(model)._small is None
    monkeypatch.delenv(small_step.ENV)
    monkeypatch.setenv(blas.ENV, "torch")
    assert DecodeStep(model)._small is None
    monkeypatch.delenv(blas.ENV)
    monkeypatch.setattr(small_step, "SMALL_BYTES", 1000)
    assert DecodeStep(model)._small is None
    monkeypatch.undo()
    monkeypatch.setattr(decode_mod, "COPY_LIMIT_BYTES", 1000)  # no fused copies to read
    assert DecodeStep(model)._small is None
    monkeypatch.undo()
    assert DecodeStep(model.to(torch.bfloat16))._small is None


@pytest.mark.parametrize("case", list(MORE_CASES))
@pytest.mark.parametrize("shape", list(PROMPTS))
def test_c_step_logits_equal_plain_path(case: str, shape: str) -> None:
    model = _model(case)
    assert DecodeStep(model)._small is not None
    steps = model.config.context_length + 20
    fast = decode_logits(model, PROMPTS[shape], steps, fast=True)
    plain = decode_logits(model, PROMPTS[shape], steps, fast=False)
    assert len(fast) == len(plain) == steps
    for f, p in zip(fast, plain):
        assert rel_err(f, p) < FP32_RTOL
        assert torch.equal(f.argmax(-1), p.argmax(-1))


@pytest.mark.parametrize("case", ["gpt2", "llama-gqa"])
def test_c_step_writes_the_caches_forward_writes(case: str) -> None:
    """The keys and values it stores (after RoPE) are the ones `GPT.forward` stores, so
    the plain path can take over from it mid-generation (a hook attached) and back."""
    model = model_for(case)
    prompts = PROMPTS["padded"]
    a = Decoder(model, prompts, max_new_tokens=6)
    b = Decoder(model, prompts, max_new_tokens=6, fast=False)
    la, lb = a.prefill(), b.prefill()
    for _ in range(5):
        t = lb.argmax(-1)
        la, lb = a.step(t, t.tolist()), b.step(t, t.tolist())
        assert torch.equal(la.argmax(-1), lb.argmax(-1))
    n = a.cache.length
    assert n == b.cache.length
    torch.testing.assert_close(a.cache.k[..., :n, :], b.cache.k[..., :n, :], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.cache.v[..., :n, :], b.cache.v[..., :n, :], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_row_gets_the_same_bits_alone_and_in_any_batch(threads: int) -> None:
    """Every sum of a row runs over its own inputs in order: alone, in a batch of three,
    or on another number of threads, a row's logits are bit for bit the same."""
    preset, overrides = MORE_CASES["lumiere-rope-gqa"]
    # a vocabulary large enough that the head's product splits over the threads
    model = make_model(preset, vocab_size=4096, **overrides)
    prompts = [[5, 17, 42, 99], [7, 1, 2, 3], [9, 9, 8, 8]]
    torch.set_num_threads(threads)

    def run(ids: list[int]) -> list[torch.Tensor]:
        dec = Decoder(model, [prompts[r] for r in ids], max_new_tokens=8)
        logits, out = dec.prefill(), []
        for i in range(8):
            t = torch.tensor([(3 * i + r) % 50 for r in ids])
            logits = dec.step(t, t.tolist())
            out.append(logits)
        return out

    together = run([0, 1, 2])
    alone = run([1])
    torch.set_num_threads(1)
    single = run([1])
    for t, a, s in zip(together, alone, single):
        assert torch.equal(t[1], a[0]) and torch.equal(a, s)


def test_generate_and_the_batch_engine_decode_through_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """`generate` and the server's engine (rows joining and leaving, slides included)
    give the plain path's greedy tokens with every step in C."""
    calls = []
    real = small_step.SmallStep.__call__
    monkeypatch.setattr(
        small_step.SmallStep, "__call__", lambda self, *a: calls.append(1) or real(self, *a)
    )
    model = model_for("llama-gqa")
    kw = dict(temperature=0, max_new_tokens=40, ignore_eos=True)
    rows = [[3, 1, 4, 1, 5], [9, 2, 6]]
    fast = [r.token_ids for r in generate(model, rows, **kw)]
    assert fast == [r.token_ids for r in generate(model, rows, fast=False, **kw)]
    assert calls
    calls.clear()
    prompts = [[1 + i] * (1 + 9 * i) for i in range(8)]

    def run() -> list[list[int]]:
        return batch_engine_tokens(model, prompts, 80)

    got = run()
    assert calls
    handle = model.hook_embed.add_hook(lambda x, hook: None)  # the plain path
    try:
        assert got == run()
    finally:
        handle.remove()


def test_weights_follow_in_place_updates() -> None:
    """A changed parameter rebuilds the decode weights and the C step over them."""
    model = model_for("lumiere")
    kw = dict(temperature=0, max_new_tokens=12, ignore_eos=True)
    before = generate(model, [[3, 1, 4, 1, 5]], **kw)[0].token_ids
    with torch.no_grad():
        torch.manual_seed(1)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    after = generate(model, [[3, 1, 4, 1, 5]], **kw)[0].token_ids
    assert after == generate(model, [[3, 1, 4, 1, 5]], fast=False, **kw)[0].token_ids
    assert after != before


def test_bad_inputs_are_refused() -> None:
    """Caches or masks it cannot read as row-major, or ids that are not int64, raise
    instead of being read wrongly."""
    model = model_for("gpt2")
    small = DecodeStep(model)._small
    cache = model.new_cache(2, 16)
    mask = torch.zeros(2, 16)
    tokens, col = torch.tensor([1, 2]), torch.tensor([0])
    assert small(tokens, tokens * 0, col, mask, cache.k, cache.v).shape == (
        2,
        model.config.vocab_size,
    )
    with pytest.raises(ValueError, match="row-major"):
        small(tokens, tokens * 0, col, mask, cache.k.transpose(3, 4), cache.v)
    with pytest.raises(ValueError, match="row-major"):
        small(tokens.int(), tokens * 0, col, mask, cache.k, cache.v)
    with pytest.raises(ValueError, match="row-major"):
        small(tokens, tokens * 0, col, mask.double(), cache.k, cache.v)


def test_without_a_compiler_the_reason_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cbuild, "library", lambda *a, **k: None)
    lib, why = small_step._load.__wrapped__()
    assert lib is None and "no C compiler" in why


def test_two_threads_decoding_one_model_at_once_agree_with_each_alone() -> None:
    """The C call drops the GIL, so two threads (a server's engine and a generate call)
    can be inside it at once over one model: each has its own scratch buffer."""
    import threading

    model = model_for("lumiere")
    kw = dict(temperature=0, max_new_tokens=40, ignore_eos=True)
    rows = {0: [[3, 1, 4, 1, 5]], 1: [[9, 2, 6, 5, 3, 5]]}
    alone = {i: generate(model, r, **kw)[0].token_ids for i, r in rows.items()}
    got: dict[int, list[int]] = {}

    def run(i: int) -> None:
        for _ in range(5):
            got[i] = generate(model, rows[i], **kw)[0].token_ids
            assert got[i] == alone[i]

    threads = [threading.Thread(target=run, args=(i,)) for i in rows]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == alone
