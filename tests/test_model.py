"""Model behaviour: exact parameter counts, causality, attention paths, KV cache, GQA, training."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lumenlm.config import ModelConfig
from lumenlm.model import GPT
from lumenlm.presets import count_parameters, get_preset, preset_names

SMALL = ["librarian-1.3m", "lumiere-1m", "tiny", "tiny-gpt2"]


def small_cfg(name: str, **kw) -> ModelConfig:
    cfg = get_preset(name).model.with_dropout(0.0)
    return dataclasses.replace(cfg, **kw)


def test_librarian_exact_parameter_count() -> None:
    model = GPT(get_preset("librarian-1.3m").model)
    assert model.num_parameters() == 1_305_600
    assert count_parameters(model.config) == 1_305_600


def test_lumenbase_exact_parameter_count() -> None:
    cfg = get_preset("lumenbase-128m").model
    assert count_parameters(cfg) == 128_404_224
    with torch.device("meta"):
        model = GPT(cfg)
    assert model.num_parameters() == 128_404_224


@pytest.mark.parametrize("name", preset_names())
def test_analytic_count_matches_model(name: str) -> None:
    cfg = get_preset(name).model
    if name == "lumenbase-128m":
        with torch.device("meta"):
            model = GPT(cfg)
    else:
        model = GPT(cfg)
    assert model.num_parameters() == count_parameters(cfg)


def test_untied_and_biased_variants_count() -> None:
    cfg = small_cfg("tiny", tie_embeddings=False, lm_head_bias=True, attn_bias=True, mlp_bias=True)
    assert GPT(cfg).num_parameters() == count_parameters(cfg)
    cfg = small_cfg("tiny-gpt2", pre_norm=False, activation="gelu_tanh")
    assert GPT(cfg).num_parameters() == count_parameters(cfg)


def test_tied_weights_share_storage() -> None:
    model = GPT(small_cfg("tiny"))
    assert model.lm_head.weight is model.tok_emb.weight


@pytest.mark.parametrize("name", SMALL)
def test_causality(name: str) -> None:
    cfg = small_cfg(name)
    model = GPT(cfg).eval()
    T = min(24, cfg.context_length)
    x = torch.randint(0, cfg.vocab_size, (2, T))
    base = model(x).logits
    for t in (0, 5, T - 2):
        y = x.clone()
        y[:, t + 1] = (y[:, t + 1] + 1) % cfg.vocab_size
        out = model(y).logits
        torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], rtol=0, atol=0)
        assert not torch.allclose(out[:, t + 1 :], base[:, t + 1 :])


@pytest.mark.parametrize("name", SMALL)
def test_sdpa_equals_explicit_path(name: str) -> None:
    cfg = small_cfg(name)
    model = GPT(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (3, min(40, cfg.context_length)))
    fast = model(x, return_hidden_states=True)
    slow = model(x, return_attentions=True, return_hidden_states=True)
    torch.testing.assert_close(fast.logits, slow.logits, rtol=1e-5, atol=1e-5)
    assert slow.attentions is not None and len(slow.attentions) == cfg.n_layers
    att = slow.attentions[0]
    assert att.shape == (3, cfg.n_heads, x.shape[1], x.shape[1])
    torch.testing.assert_close(att.sum(-1), torch.ones_like(att.sum(-1)))
    assert torch.all(att.triu(1) == 0)  # causal
    assert fast.hidden_states is not None and len(fast.hidden_states) == cfg.n_layers + 1


def _decode_incrementally(model: GPT, x: torch.Tensor, prefill: int) -> torch.Tensor:
    cache = model.new_cache(x.shape[0])
    outs = [model(x[:, :prefill], cache=cache).logits]
    for t in range(prefill, x.shape[1]):
        outs.append(model(x[:, t : t + 1], cache=cache).logits)
    assert cache.length == x.shape[1]
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize(
    "name,kv_heads",
    [
        ("tiny-gpt2", None),
        ("lumiere-1m", None),
        ("tiny", 1),
        ("tiny", 2),
        ("tiny", 4),
        ("librarian-1.3m", None),
    ],
)
def test_kv_cache_equals_full_recompute(name: str, kv_heads: int | None) -> None:
    kw = {} if kv_heads is None else {"n_kv_heads": kv_heads}
    cfg = small_cfg(name, **kw)
    model = GPT(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (2, min(30, cfg.context_length)))
    full = model(x).logits
    for prefill in (1, 7):
        torch.testing.assert_close(
            _decode_incrementally(model, x, prefill), full, rtol=1e-5, atol=1e-5
        )


def test_kv_cache_explicit_path_and_chunks() -> None:
    model = GPT(small_cfg("tiny")).eval()
    x = torch.randint(0, 512, (1, 20))
    full = model(x, return_attentions=True).logits
    cache = model.new_cache(1)
    a = model(x[:, :8], cache=cache, return_attentions=True).logits
    b = model(
        x[:, 8:15], cache=cache, return_attentions=True
    ).logits  # multi-token chunk over a cache
    c = model(x[:, 15:], cache=cache).logits
    torch.testing.assert_close(torch.cat([a, b, c], 1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_gqa_matches_explicit_repeat(kv_heads: int) -> None:
    """GQA equals MHA whose K/V heads are the shared heads repeated per group."""
    cfg = small_cfg("tiny", n_kv_heads=kv_heads)
    gqa = GPT(cfg).eval()
    mha = GPT(dataclasses.replace(cfg, n_kv_heads=cfg.n_heads)).eval()
    sd = gqa.state_dict()
    rep = cfg.n_heads // kv_heads
    for i in range(cfg.n_layers):
        for n in ("k", "v"):
            w = sd[f"blocks.{i}.attn.{n}_proj.weight"].view(kv_heads, cfg.d_head, cfg.d_model)
            sd[f"blocks.{i}.attn.{n}_proj.weight"] = w.repeat_interleave(rep, 0).reshape(
                -1, cfg.d_model
            )
    mha.load_state_dict(sd)
    x = torch.randint(0, cfg.vocab_size, (2, 16))
    torch.testing.assert_close(gqa(x).logits, mha(x).logits, rtol=1e-5, atol=1e-5)
    assert gqa.num_parameters() < mha.num_parameters() or kv_heads == cfg.n_heads


def test_left_padding_matches_unpadded() -> None:
    model = GPT(small_cfg("tiny")).eval()
    a = torch.randint(0, 512, (1, 10))
    pad = 3
    padded = torch.cat([torch.zeros(1, pad, dtype=torch.long), a], 1)
    mask = torch.cat([torch.zeros(1, pad), torch.ones(1, 10)], 1).long()
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(padded, attention_mask=mask, position_ids=pos).logits[:, pad:]
    torch.testing.assert_close(out, model(a).logits, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(model(padded, attention_mask=mask, position_ids=pos).logits).all()


def test_learned_positions_refuse_overflow() -> None:
    cfg = small_cfg("tiny-gpt2")
    model = GPT(cfg).eval()
    with pytest.raises(ValueError, match="position"):
        model(torch.zeros(1, cfg.context_length + 1, dtype=torch.long))


def test_loss_ignores_padding_targets() -> None:
    model = GPT(small_cfg("tiny")).eval()
    x = torch.randint(0, 512, (2, 12))
    y = torch.randint(0, 512, (2, 12))
    y_masked = y.clone()
    y_masked[:, 6:] = -100
    full = model(x, y_masked).loss
    logits = model(x).logits[:, :6]
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 512), y[:, :6].reshape(-1))
    torch.testing.assert_close(full, ref)


def test_dropout_only_in_training() -> None:
    cfg = get_preset("librarian-1.3m").model
    model = GPT(cfg)
    x = torch.randint(0, cfg.vocab_size, (1, 16))
    model.train()
    assert not torch.equal(model(x).logits, model(x).logits)
    model.eval()
    assert torch.equal(model(x).logits, model(x).logits)


@pytest.mark.parametrize("name", ["tiny", "tiny-gpt2"])
def test_overfits_single_batch(name: str) -> None:
    torch.manual_seed(0)
    cfg = small_cfg(name)
    model = GPT(cfg)
    x = torch.randint(0, cfg.vocab_size, (4, 32))
    y = torch.roll(x, -1, dims=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model(x, y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_bf16_forward_backward() -> None:
    model = GPT(small_cfg("tiny"))
    x = torch.randint(0, 512, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, x)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("explicit", [False, True])
def test_packed_documents_equal_each_document_alone(name: str, explicit: bool) -> None:
    """document_ids: a block-diagonal causal mask and positions that restart, so no
    document sees its neighbour and each one's logits equal its logits alone."""
    cfg = small_cfg(name)
    model = GPT(cfg).eval()
    T = min(30, cfg.context_length)
    lengths = [[7, 1, 12, T - 20], [T - 5, 5]]
    x = torch.randint(0, cfg.vocab_size, (2, T))
    docs = torch.tensor(
        [[i for i, n in enumerate(row) for _ in range(n)] for row in lengths], dtype=torch.long
    )
    packed = model(x, document_ids=docs, return_attentions=explicit).logits
    for b, row in enumerate(lengths):
        start = 0
        for n in row:
            alone = model(x[b : b + 1, start : start + n]).logits[0]
            torch.testing.assert_close(packed[b, start : start + n], alone, rtol=1e-5, atol=1e-5)
            start += n


def test_document_positions_restart() -> None:
    from lumenlm.model import document_positions

    docs = torch.tensor([[0, 0, 0, 1, 1, 2], [5, 5, 5, 5, 5, 5]])
    assert document_positions(docs).tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]]
