"""The fast decode step (`model.decode_step`) against the plain path (`GPT.forward`):
its torch-ops step, which the C step for small models (tests/test_small_step.py) stands
in for where that is available, so here it is turned off.

Stated tolerances:
- fp32: every step's logits within 1e-5 of the plain path's, relative to the largest
  |logit| of that step (measured: under 1e-6), and greedy tokens identical;
- bf16 weights (the fast step in bf16 against the plain path in fp32): within 5% of the
  largest |logit|, and the top token of the bf16 logits is one the fp32 model scores
  within that same margin of its best.

Cases: GPT-2 style (`tiny-gpt2`), Lumiere's layout (RMSNorm + SwiGLU + learned
positions), Llama with GQA (`tiny`), a post-norm model and one with d_value != d_head;
batches with and without left padding, decoding across context slides. Whether the
loops take no host sync is checked on the meta device, where any read of a tensor
value raises.
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
from lumenlm import blas, packed, small_step
from lumenlm.infer import generate
from lumenlm.infer.engine import Decoder
from lumenlm.infer.sampling import SamplingParams, sample_next
from lumenlm.model import GPT
from lumenlm.model import decode_step as decode_mod
from lumenlm.model.decode_step import DecodeStep
from lumenlm.presets import get_preset

BF16_RTOL = 5e-2


@pytest.fixture(autouse=True)
def _torch_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are of the torch-ops step: small fp32 CPU models would otherwise take
    the C step (`lumenlm.small_step`, tests/test_small_step.py)."""
    monkeypatch.setenv(small_step.ENV, "0")


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("shape", list(PROMPTS))
def test_fast_step_logits_equal_plain_path(case: str, shape: str) -> None:
    model = model_for(case)
    steps = model.config.context_length + 20
    fast = decode_logits(model, PROMPTS[shape], steps, fast=True)
    plain = decode_logits(model, PROMPTS[shape], steps, fast=False)
    assert len(fast) == len(plain) == steps
    for f, p in zip(fast, plain):
        assert rel_err(f, p) < FP32_RTOL
        assert torch.equal(f.argmax(-1), p.argmax(-1))


def _need(product: str) -> None:
    why = packed.unavailable() if product == "packed" else None
    if why is not None:
        pytest.skip(f"the packed kernel is unavailable here: {why}")


@pytest.mark.parametrize("product", ["numpy", "packed"])
@pytest.mark.parametrize("case", list(CASES))
def test_fast_step_through_numpy_or_the_packed_kernel_equals_plain_path(
    case: str, product: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same parity when the step multiplies through numpy's BLAS or the packed kernel
    (`lumenlm.blas`), as large models do where one is faster: forced here for a tiny
    model (biases, post-norm and GQA included); packed, the step keeps no (in, out)
    copies."""
    _need(product)
    monkeypatch.setenv(blas.ENV, product)  # at any model size
    blas.reset()
    try:
        model = model_for(case)
        step = DecodeStep(model)
        assert step._mm is (blas.numpy_mm if product == "numpy" else packed.packed_mm)
        assert step.weights.packed == (product == "packed")
        assert all(
            isinstance(lin[0], packed.PackedMatrix) == (product == "packed")
            for lw in step.weights.layers
            for lin in (*lw.qkv, lw.o, *lw.up, lw.down)
        )
        steps = model.config.context_length + 20
        fast = decode_logits(model, PROMPTS["padded"], steps, fast=True)
        plain = decode_logits(model, PROMPTS["padded"], steps, fast=False)
    finally:
        blas.reset()
    for f, p in zip(fast, plain):
        assert rel_err(f, p) < FP32_RTOL
        assert torch.equal(f.argmax(-1), p.argmax(-1))


@pytest.mark.parametrize("case", ["gpt2", "lumiere", "llama-gqa"])
def test_generate_fast_equals_plain_and_recompute(case: str) -> None:
    """Greedy tokens: fast step == GPT.forward with the cache == full recompute, padded
    rows, past the context (sliding); sampled tokens with seeds too."""
    model = model_for(case)
    rows = PROMPTS["padded"]
    n = model.config.context_length + 10
    kw = dict(temperature=0, max_new_tokens=n, ignore_eos=True)
    fast = [r.token_ids for r in generate(model, rows, **kw)]
    assert fast == [r.token_ids for r in generate(model, rows, fast=False, **kw)]
    assert fast == [r.token_ids for r in generate(model, rows, use_cache=False, **kw)]
    kw = dict(temperature=0.9, top_k=20, top_p=0.9, repetition_penalty=1.2, seed=3)
    kw |= dict(max_new_tokens=20, ignore_eos=True, logit_bias={4: 3.0})
    sampled = [r.token_ids for r in generate(model, rows, **kw)]
    assert sampled == [r.token_ids for r in generate(model, rows, fast=False, **kw)]


@pytest.mark.parametrize("blas_env", ["auto", "numpy", "packed"])
def test_batch_engine_fast_equals_plain(blas_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's engine: the fast step and GPT.forward (forced by a hook that changes
    nothing) give the same greedy tokens, for prompts of many lengths, sliding included;
    also with the step's products through numpy's BLAS or the packed kernel (run from
    the engine's thread, at every batch size the engine forms)."""
    _need(blas_env)
    monkeypatch.setenv(blas.ENV, blas_env)
    blas.reset()
    calls = []
    owner = blas if blas_env != "packed" else packed
    name = "numpy_mm" if blas_env != "packed" else "packed_mm"
    real = getattr(owner, name)
    monkeypatch.setattr(owner, name, lambda a, b: calls.append(1) or real(a, b))
    model = model_for("llama-gqa")
    prompts = [[1 + i] * (1 + 9 * i) for i in range(8)]

    def run() -> list[list[int]]:
        return batch_engine_tokens(model, prompts, 80)

    fast = run()
    handle = model.hook_embed.add_hook(lambda x, hook: None)
    try:
        plain = run()
    finally:
        handle.remove()
    assert fast == plain
    assert all(len(t) == 80 for t in fast)
    assert bool(calls) == (blas_env != "auto")  # the products went where they were sent


def test_module_hooks_and_hook_points_take_the_plain_path() -> None:
    """A forward hook on any module (or a hook point) must see the step: the fast step
    stands aside while one is attached (module hooks: from the next `refresh`, which
    every prefill does)."""
    model = model_for("gpt2")
    step = DecodeStep(model)
    assert step.usable()
    seen: list[tuple] = []
    h = model.blocks[0].mlp.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    step.refresh()
    assert not step.usable()
    generate(model, [[1, 2, 3]], temperature=0, max_new_tokens=4)
    assert len(seen) == 1 + 3  # the prefill and every step
    h.remove()
    step.refresh()
    assert step.usable()
    handle = model.blocks[1].hook_resid_post.add_hook(lambda x, hook: None)
    assert not step.usable()
    handle.remove()
    model.train()
    assert not step.usable()
    model.eval()
    assert step.usable()


def test_weights_follow_in_place_updates() -> None:
    """The decode-layout copies are rebuilt after a parameter changes (a training step,
    load_state_dict): the fast step never decodes with stale weights."""
    model = model_for("lumiere")
    rows = [[3, 1, 4, 1, 5]]
    kw = dict(temperature=0, max_new_tokens=12, ignore_eos=True)
    before = generate(model, rows, **kw)[0].token_ids
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    after = generate(model, rows, **kw)[0].token_ids
    assert after == generate(model, rows, fast=False, **kw)[0].token_ids
    assert after != before


def test_without_copies_same_logits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Models past COPY_LIMIT_BYTES decode from the model's own tensors (no fused or
    transposed copies): the same logits."""
    model = model_for("llama-gqa")
    monkeypatch.setattr(decode_mod, "COPY_LIMIT_BYTES", 0)
    model.__dict__.pop("_decode_weights", None)
    w = decode_mod.decode_weights(model)
    assert len(w.layers[0].qkv) == 3
    assert w.head[0].data_ptr() == model.lm_head.weight.data_ptr()
    steps = model.config.context_length + 5
    for f, p in zip(
        decode_logits(model, PROMPTS["padded"], steps, fast=True),
        decode_logits(model, PROMPTS["padded"], steps, fast=False),
    ):
        assert rel_err(f, p) < FP32_RTOL


@pytest.mark.parametrize("case", ["gpt2", "llama-gqa"])
def test_bf16_weights_within_tolerance(case: str) -> None:
    """bf16 inference (`--dtype bf16`): the fast step's logits stay within BF16_RTOL of
    the fp32 plain path's, teacher-forced on the same tokens."""
    model = model_for(case)
    ref = GPT(model.config).eval()
    ref.load_state_dict(model.state_dict())
    low = model.to(torch.bfloat16)
    rows = PROMPTS["padded"]
    dec_lo = Decoder(low, rows, max_new_tokens=30)
    dec_ref = Decoder(ref, rows, max_new_tokens=30, fast=False)
    lo, hi = dec_lo.prefill(), dec_ref.prefill()
    for _ in range(30):
        assert lo.dtype == torch.bfloat16
        assert rel_err(lo, hi) < BF16_RTOL
        top_lo = lo.float().argmax(-1)
        margin = BF16_RTOL * hi.abs().max()
        assert bool((hi.max(-1).values - hi.gather(-1, top_lo[:, None])[:, 0] <= margin).all())
        t = hi.argmax(-1)  # both follow the fp32 tokens
        lo, hi = dec_lo.step(t, t.tolist()), dec_ref.step(t, t.tolist())


def test_no_host_sync_on_meta_device() -> None:
    """The decode step and every sampling processor run on the meta device, which has no
    values to read: any .item(), bool() or data-dependent branch would raise."""
    with pytest.raises(RuntimeError):
        bool(torch.zeros(1, device="meta"))  # the probe works
    V, B = 64, 3
    logits = torch.randn(B, V, device="meta")
    settings = [
        dict(temperature=0),
        dict(temperature=0.7, top_k=5, top_p=0.9, min_p=0.05),
        dict(temperature=0, repetition_penalty=1.3, presence_penalty=0.5),
        dict(temperature=1.0, frequency_penalty=0.3, repetition_penalty=0.8),
    ]
    for kw in settings:
        p = SamplingParams(**kw)
        seen = torch.zeros(B, V, dtype=torch.bool, device="meta")
        counts = torch.zeros(B, V, dtype=torch.long, device="meta")
        bias = torch.zeros(V, device="meta")
        out = sample_next(logits, p, None, seen, counts if p.counts_tokens else None, bias)
        assert out.shape == (B,) and out.device.type == "meta"
    model = GPT(get_preset("tiny").model).eval().to("meta")
    cache = model.new_cache(B, 16)
    ids = torch.zeros(B, dtype=torch.long, device="meta")
    col = torch.zeros(1, dtype=torch.long, device="meta")
    keys = torch.zeros(B, 16, device="meta")
    out = DecodeStep(model)(ids, ids, col, keys, cache.k, cache.v, None)
    assert out.shape == (B, model.config.vocab_size)


@pytest.mark.slow
def test_compiled_step_same_tokens() -> None:
    """`compile=True` (torch.compile over the full static buffer): the same greedy tokens
    as eager, across a slide, with padding. Slow: a cold compile takes minutes here."""
    model = model_for("llama-gqa")
    rows = PROMPTS["padded"]
    kw = dict(temperature=0, max_new_tokens=model.config.context_length + 10, ignore_eos=True)
    eager = [r.token_ids for r in generate(model, rows, **kw)]
    assert eager == [r.token_ids for r in generate(model, rows, compile=True, **kw)]
    assert eager == [r.token_ids for r in generate(model, rows, compile=True, **kw)]  # reused


@pytest.mark.parametrize("shape", [(1, 256), (8, 512), (3, 2), (2, 7)])
def test_gelu_outside_onednn_equals_gelu(shape: tuple[int, int]) -> None:
    """The step's exact GELU (ATen's kernel through a transposed view) is F.gelu to an
    ulp or two, contiguous, and leaves its input alone; odd widths take F.gelu itself."""
    x = torch.randn(shape)
    before = x.clone()
    y = decode_mod._gelu(x, "none")
    torch.testing.assert_close(y, torch.nn.functional.gelu(x), rtol=1e-6, atol=1e-6)
    assert y.is_contiguous() and y.shape == x.shape and torch.equal(x, before)
    tanh = decode_mod._gelu(x, "tanh")
    assert torch.equal(tanh, torch.nn.functional.gelu(x, approximate="tanh"))


def test_auto_probes_the_models_own_weights_and_keeps_its_layout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With every model counted as large, `auto` runs the real probe on the model's own
    matrices; the step's layout follows the choice, survives a refresh, and decodes the
    plain path's greedy tokens."""
    monkeypatch.setenv(blas.ENV, "auto")
    monkeypatch.setattr(blas, "STREAM_BYTES", 0)
    blas.reset()
    seen = []
    real = blas._probe_weights
    monkeypatch.setattr(blas, "_probe_weights", lambda w, g: seen.append(1) or real(w, g))
    try:
        model = model_for("llama-gqa")
        step = DecodeStep(model)
        assert seen and step.blas.endswith("chosen by the probe")
        assert step.weights.packed == (step._mm is packed.packed_mm)
        before = step.weights
        step.refresh()
        assert step.weights is before and len(seen) == 1  # no second probe, no rebuild
        kw = dict(temperature=0, max_new_tokens=30, ignore_eos=True)
        rows = PROMPTS["padded"]
        fast = [r.token_ids for r in generate(model, rows, **kw)]
        assert fast == [r.token_ids for r in generate(model, rows, fast=False, **kw)]
    finally:
        blas.reset()
