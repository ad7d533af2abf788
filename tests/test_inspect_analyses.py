"""The analysis functions against the model itself: attention maps are the model's
attention, the logit lens ends in its output, per-token losses average to its loss,
direct logit attribution sums to the logit exactly, head ablation equals editing the
weights, the induction score finds a planted induction stripe; all of it is JSON-able."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from tokenizers import Tokenizer

from lumenlm.inspect import (
    attention_maps,
    direct_logit_attribution,
    head_ablation,
    induction_scores,
    logit_lens,
    run_analyses,
    token_losses,
)
from lumenlm.model import GPT
from lumenlm.presets import get_preset
from model_helpers import make_tokenizer

TEXTS = ["the cat sat on the mat.", "a little girl read a big blue book in the library"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    return Tokenizer.from_file(str(make_tokenizer(tmp_path_factory.mktemp("t") / "t.json")))


def _model(name: str, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    cfg = dataclasses.replace(get_preset(name).model.with_dropout(0.0), vocab_size=300)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n or n.endswith("bias"):
                p.add_(0.2 * torch.randn_like(p))
            elif "proj" in n:
                p.mul_(8)  # sharper patterns and predictions than at init
    return model


def _ids(tok: Tokenizer, text: str) -> torch.Tensor:
    return torch.tensor([tok.encode(text).ids])


@pytest.mark.parametrize("name", ["tiny", "lumiere-1m"])
@pytest.mark.parametrize("text", TEXTS)
def test_maps_lens_and_losses_match_the_model(name: str, text: str, tok) -> None:
    model = _model(name)
    x = _ids(tok, text)
    out = model(x, targets=torch.roll(x, -1, 1), return_attentions=True)
    att = attention_maps(model, tok, text)
    for layer, a in enumerate(out.attentions):
        torch.testing.assert_close(torch.tensor(att["patterns"][layer]), a[0], atol=1e-4, rtol=0)
    lens = logit_lens(model, tok, text, top_k=3)
    assert lens["layers"][0] == "embed" and lens["layers"][-1] == "final"
    logp = torch.log_softmax(out.logits[0], -1)
    assert [p[0]["id"] for p in lens["top"][-1]] == logp.argmax(-1).tolist()
    want = logp[:-1].gather(-1, x[0, 1:, None])[:, 0]
    torch.testing.assert_close(
        torch.tensor(lens["next_token_logprob"][-1]), want, atol=1e-4, rtol=0
    )
    losses = token_losses(model, tok, text, top_k=2)
    assert losses["losses"][0] is None and len(losses["losses"]) == x.shape[1]
    ref = torch.nn.functional.cross_entropy(out.logits[0, :-1], x[0, 1:])
    assert math.isclose(losses["mean_loss"], float(ref.detach()), abs_tol=1e-4)


@pytest.mark.parametrize("name", ["tiny", "tiny-gpt2", "lumiere-1m"])
def test_direct_logit_attribution_sums_to_the_logit(name: str, tok) -> None:
    model = _model(name)
    for text in TEXTS:
        dla = direct_logit_attribution(model, tok, text)
        heads = torch.tensor(dla["heads"])  # (T, L, H)
        assert heads.shape[1:] == (model.config.n_layers, model.config.n_heads)
        parts = (
            heads.sum((1, 2))
            + torch.tensor(dla["mlp"]).sum(1)
            + torch.tensor(dla["attn_bias"]).sum(1)
            + torch.tensor(dla["embed"])
            + torch.tensor(dla["bias"])
        )
        torch.testing.assert_close(parts, torch.tensor(dla["logit"]), atol=2e-3, rtol=0)
        assert heads.abs().max() > 1e-2


def test_head_ablation_equals_zeroing_the_heads_weights(tok) -> None:
    model = _model("tiny")
    text = TEXTS[1]
    abl = head_ablation(model, tok, text)
    layer, head = 1, 3
    edited = _model("tiny")
    dv = model.config.d_value
    with torch.no_grad():
        edited.blocks[layer].attn.o_proj.weight[:, head * dv : (head + 1) * dv] = 0
    x = _ids(tok, text)
    loss = torch.nn.functional.cross_entropy(edited(x).logits[0, :-1], x[0, 1:])
    assert math.isclose(
        abl["base_loss"] + abl["delta"][layer][head], float(loss.detach()), abs_tol=1e-4
    )
    assert abs(abl["delta"][layer][head]) > 1e-4


def test_induction_score_finds_a_planted_induction_head() -> None:
    model = _model("tiny")
    n = 20

    def stripe(p: torch.Tensor, hook) -> torch.Tensor:
        # Layer 1 head 0 attends from each repeated token to the one after its first copy.
        p = p.clone()
        q = torch.arange(n, 2 * n)
        p[:, 0, n:] = 0
        p[:, 0, q, q - n + 1] = 1
        return p

    with model.hooks([("blocks.1.attn.hook_pattern", stripe)]):
        got = induction_scores(model, seq_len=n, batch=2)
    scores = torch.tensor(got["scores"])
    assert scores[1, 0] == 1.0
    others = torch.ones_like(scores, dtype=torch.bool)
    others[1, 0] = False
    assert scores[others].max() < 0.3  # random heads: about 1/position
    assert got["seq_len"] == n


def test_run_analyses_is_json_able(tok) -> None:
    model = _model("tiny")
    model.tokenizer = tok
    data = run_analyses(model, TEXTS[0], "attention,dla,induction", top_k=2)
    assert set(data) == {"attention", "dla", "induction"}
    assert json.loads(json.dumps(data)) == data
