"""Hook points: TransformerLens names and shapes, run_with_cache caching only what was
asked, run_with_hooks replacing activations (head ablation, activation patching), the
hooks context cleaning up after errors, the cache's residual-stream views, hooks with a
KV cache and left padding, and torch.compile without graph breaks."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lumenlm.errors import ConfigError
from lumenlm.model import GPT
from lumenlm.presets import get_preset

NAMES = ["tiny", "tiny-gpt2", "lumiere-1m"]  # Llama/GQA, GPT-2, RMSNorm+SwiGLU+learned


def _model(name: str, seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = dataclasses.replace(get_preset(name).model.with_dropout(0.0), **kw)
    model = GPT(cfg).eval()
    with torch.no_grad():  # non-trivial norm weights and biases, so they are tested too
        for n, p in model.named_parameters():
            if "norm" in n or n.endswith("bias"):
                p.add_(0.2 * torch.randn_like(p))
    return model


def _tokens(model: GPT, B: int = 2, T: int = 12, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (B, T), generator=g)


@pytest.mark.parametrize("name", NAMES)
def test_every_hook_has_tl_name_and_shape(name: str) -> None:
    model = _model(name)
    cfg = model.config
    x = _tokens(model)
    B, T = x.shape
    H, K, d, dv, f = cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_value, cfg.d_ff
    logits, cache = model.run_with_cache(x)
    assert set(cache) == set(model.hook_dict)
    want = {"hook_embed": (B, T, cfg.d_model), "ln_final.hook_scale": (B, T, 1)}
    if cfg.positions == "learned":
        want["hook_pos_embed"] = (B, T, cfg.d_model)
    for i in range(cfg.n_layers):
        p = f"blocks.{i}."
        for n in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out"):
            want[p + n] = (B, T, cfg.d_model)
        want |= {
            p + "ln1.hook_normalized": (B, T, cfg.d_model),
            p + "attn.hook_q": (B, T, H, d),
            p + "attn.hook_k": (B, T, K, d),  # per KV head
            p + "attn.hook_v": (B, T, K, dv),
            p + "attn.hook_attn_scores": (B, H, T, T),
            p + "attn.hook_pattern": (B, H, T, T),
            p + "attn.hook_z": (B, T, H, dv),
            p + "mlp.hook_pre": (B, T, f),
            p + "mlp.hook_post": (B, T, f),
            p + "hook_mlp_out": (B, T, cfg.d_model),
        }
    for n, shape in want.items():
        assert tuple(cache[n].shape) == shape, n
    # Hooks attached change nothing, and agree with the old outputs.
    old = model(x, return_hidden_states=True, return_attentions=True)
    torch.testing.assert_close(logits, old.logits, rtol=1e-5, atol=1e-5)
    for i in range(cfg.n_layers):
        torch.testing.assert_close(cache["resid_pre", i], old.hidden_states[i])
        torch.testing.assert_close(cache["pattern", i], old.attentions[i])
    torch.testing.assert_close(
        cache[f"blocks.{cfg.n_layers - 1}.hook_resid_post"], old.hidden_states[-1]
    )
    assert not any(hp.active for hp in model.hook_dict.values())  # all removed


def test_cache_holds_only_what_was_asked() -> None:
    model = _model("tiny")
    x = _tokens(model)
    _, cache = model.run_with_cache(x, names_filter="blocks.1.attn.hook_pattern")
    assert list(cache) == ["blocks.1.attn.hook_pattern"] and len(cache) == 1
    _, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_z"))
    assert sorted(cache) == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
    with pytest.raises(KeyError, match="names_filter"):
        cache["blocks.0.hook_resid_pre"]


def test_unknown_hook_name_lists_close_names() -> None:
    model = _model("tiny")
    with pytest.raises(ConfigError, match=r"close names: blocks\.0\.attn\.hook_z") as e:
        model.run_with_cache(_tokens(model), names_filter="blocks.0.attn.hook_zz")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="blocks.1.hook_resid_pre"):
        model.run_with_hooks(_tokens(model), fwd_hooks=[("blocks.7.hook_resid_pre", print)])
    assert not any(hp.active for hp in model.hook_dict.values())


def test_hooks_context_removes_hooks_on_exception() -> None:
    model = _model("tiny")
    x = _tokens(model)
    base = model(x).logits

    def boom(t: torch.Tensor, hook) -> None:
        raise RuntimeError("inside a hook")

    with pytest.raises(RuntimeError, match="inside a hook"):
        model.run_with_hooks(x, fwd_hooks=[("blocks.0.hook_mlp_out", boom)])
    with pytest.raises(ZeroDivisionError), model.hooks([("hook_embed", lambda t, h: t * 0)]):
        assert model.hook_dict["hook_embed"].active
        _ = 1 / 0
    assert not any(hp.active for hp in model.hook_dict.values())
    assert model._hook_switch.count == 0  # the forward is back on its unhooked path
    torch.testing.assert_close(model(x).logits, base, rtol=0, atol=0)
    with pytest.raises(ValueError, match="must keep"):
        model.run_with_hooks(x, fwd_hooks=[("blocks.0.attn.hook_z", lambda t, h: t[:, :1])])


@pytest.mark.parametrize("name,kv_heads", [("tiny", 2), ("tiny", 4), ("tiny-gpt2", None)])
def test_zeroing_one_head_changes_attn_out_by_its_contribution(name, kv_heads) -> None:
    kw = {} if kv_heads is None else {"n_kv_heads": kv_heads}
    model = _model(name, **kw)
    cfg = model.config
    x = _tokens(model, B=3, T=10)
    layer, head = 1, 2
    _, clean = model.run_with_cache(x)

    def ablate(z: torch.Tensor, hook) -> torch.Tensor:
        z = z.clone()
        z[:, :, head] = 0
        return z

    z_name = f"blocks.{layer}.attn.hook_z"
    _, patched = model.run_with_cache(x, fwd_hooks=[(z_name, ablate)])
    order = list(clean)  # the cache fills in forward order
    for n in order[: order.index(z_name)]:
        torch.testing.assert_close(patched[n], clean[n], rtol=0, atol=0, msg=n)
    others = [h for h in range(cfg.n_heads) if h != head]
    torch.testing.assert_close(patched[z_name][:, :, others], clean[z_name][:, :, others])
    assert patched[z_name][:, :, head].abs().max() == 0
    w_o = model.blocks[layer].attn.o_proj.weight.view(cfg.d_model, cfg.n_heads, cfg.d_value)
    own = clean[z_name][:, :, head] @ w_o[:, head].T  # the head's write to the stream
    delta = clean[f"blocks.{layer}.hook_attn_out"] - patched[f"blocks.{layer}.hook_attn_out"]
    torch.testing.assert_close(delta, own, rtol=1e-5, atol=1e-6)
    assert own.abs().max() > 1e-3  # the head did contribute
    torch.testing.assert_close(clean.head_results(layer)[:, :, head], own, rtol=1e-5, atol=1e-6)


def test_kv_head_j_feeds_query_heads_j_times_n_rep() -> None:
    """The documented GQA mapping: query head h reads KV head h // n_rep."""
    model = _model("tiny", n_kv_heads=2)  # 4 query heads, n_rep = 2
    x = _tokens(model)
    _, clean = model.run_with_cache(x, names_filter="blocks.0.attn.hook_z")

    def bump_kv1(v: torch.Tensor, hook) -> torch.Tensor:
        v = v.clone()
        v[:, :, 1] += 1.0
        return v

    _, patched = model.run_with_cache(
        x, names_filter="blocks.0.attn.hook_z", fwd_hooks=[("blocks.0.attn.hook_v", bump_kv1)]
    )
    diff = (patched["z", 0] - clean["z", 0]).abs().amax(dim=(0, 1, 3))
    assert diff[:2].max() == 0 and diff[2:].min() > 0.5


@pytest.mark.parametrize("name", NAMES)
def test_patching_a_whole_stream_gives_the_other_run(name: str) -> None:
    model = _model(name)
    a, b = _tokens(model, seed=1), _tokens(model, seed=2)
    logits_b, cache_b = model.run_with_cache(b, names_filter="blocks.1.hook_resid_pre")
    out = model.run_with_hooks(
        a, fwd_hooks=[("blocks.1.hook_resid_pre", lambda t, h: cache_b[h.name])]
    )
    torch.testing.assert_close(out.logits, logits_b, rtol=1e-5, atol=1e-5)
    steer = model.run_with_hooks(a, fwd_hooks=[("blocks.0.hook_resid_post", lambda t, h: t + 1)])
    assert not torch.allclose(steer.logits, model(a).logits)


@pytest.mark.parametrize("name", ["tiny", "tiny-gpt2"])
def test_cache_views_add_up(name: str) -> None:
    model = _model(name)
    cfg = model.config
    x = _tokens(model)
    logits, cache = model.run_with_cache(x)
    final = cache[f"blocks.{cfg.n_layers - 1}.hook_resid_post"]
    parts, labels = cache.decompose_resid(return_labels=True)
    assert labels[0] == "embed" and labels[-1] == f"{cfg.n_layers - 1}_mlp_out"
    torch.testing.assert_close(parts.sum(0), final, rtol=1e-5, atol=1e-5)
    acc, labels = cache.accumulated_resid(return_labels=True)
    assert acc.shape[0] == cfg.n_layers + 1 and labels[-1] == "final_post"
    torch.testing.assert_close(acc[-1], final)
    for i in range(cfg.n_layers):  # heads + o_proj bias = the attention output
        heads = cache.stack_head_results(i + 1)[i * cfg.n_heads :].sum(0)
        bias = model.blocks[i].attn.o_proj.bias
        heads = heads + (bias if bias is not None else 0)
        torch.testing.assert_close(heads, cache["attn_out", i], rtol=1e-5, atol=1e-5)
    lens = cache.logit_lens()
    torch.testing.assert_close(lens[-1], torch.log_softmax(logits, -1), rtol=1e-5, atol=1e-5)
    # The frozen final norm is linear: the normalised parts sum to ln_final's output - bias.
    normed = cache.decompose_resid(apply_ln=True).sum(0)
    bias = getattr(model.final_norm, "bias", None)
    out = model.final_norm(final) - (bias if bias is not None else 0)
    torch.testing.assert_close(normed, out, rtol=1e-4, atol=1e-5)


def test_hooks_with_kv_cache_match_the_full_run() -> None:
    model = _model("tiny", n_kv_heads=2)
    x = _tokens(model, B=2, T=9)
    _, full = model.run_with_cache(x)
    kv = model.new_cache(2)
    _, first = model.run_with_cache(x[:, :5], cache=kv)
    _, step = model.run_with_cache(x[:, 5:6], cache=kv)
    assert step["k", 1].shape == (2, 1, 2, model.config.d_head)  # the new position only
    assert step["pattern", 1].shape == (2, 4, 1, 6)  # every key so far
    torch.testing.assert_close(step["pattern", 1][:, :, 0], full["pattern", 1][:, :, 5, :6])
    torch.testing.assert_close(first["pattern", 0], full["pattern", 0][:, :, :5, :5])
    torch.testing.assert_close(step["z", 0][:, 0], full["z", 0][:, 5], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["tiny", "tiny-gpt2"])
def test_hooks_with_left_padding_match_unpadded(name: str) -> None:
    model = _model(name)
    a = _tokens(model, B=1, T=8)
    pad = 3
    padded = torch.cat([torch.zeros(1, pad, dtype=torch.long), a], 1)
    mask = torch.cat([torch.zeros(1, pad), torch.ones(1, 8)], 1).long()
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    _, p = model.run_with_cache(padded, attention_mask=mask, position_ids=pos)
    _, u = model.run_with_cache(a)
    torch.testing.assert_close(p["pattern", 1][..., pad:, pad:], u["pattern", 1])
    assert p["pattern", 1][..., pad:, :pad].abs().max() == 0  # padding keys get nothing
    torch.testing.assert_close(
        p["resid_post", 1][:, pad:], u["resid_post", 1], rtol=1e-5, atol=1e-5
    )


@pytest.mark.slow  # dynamo tracing takes ~15 s on two CPU cores
def test_unhooked_model_compiles_without_graph_breaks() -> None:
    model = _model("tiny")
    x = _tokens(model)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
