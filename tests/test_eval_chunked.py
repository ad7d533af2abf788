"""Chunked evaluation (`model.chunked_loss.linear_token_scores`, used by `evaluate_tokens`
and `rolling_loglikelihoods`) against the plain full-logits path it replaced.

The reference below is the pre-chunking `evaluate_tokens` inner loop, kept verbatim in
spirit: full (B, T, V) logits from `model(x).logits`, `F.cross_entropy` per row in fp32
and `torch.topk` membership for top-1/5/10. Loss, perplexity and bits per byte must
agree to float tolerance (rel 1e-5: the NLL is log-sum-exp minus the target logit in
both, summed in another order), top-k hit counts exactly. The token streams are sampled
from each model itself with a sharpened head, so top-k rates are far from 0 and 1 and a
wrong rank would show.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lumenlm.errors import LumenError
from lumenlm.evaluate import evaluate_tokens, window_spans
from lumenlm.evaluate.lm import TOPK
from lumenlm.evaluate.rolling import rolling_loglikelihoods, rolling_spans
from lumenlm.model import GPT
from lumenlm.model import chunked_loss as CL
from lumenlm.presets import get_preset

SMALL_LLAMA_GQA = {  # Llama-style: RMSNorm, SwiGLU, RoPE, 2 KV heads for 4 query heads
    "n_layers": 2,
    "d_model": 128,
    "n_heads": 4,
    "n_kv_heads": 2,
    "d_head": 32,
    "d_ff": 256,
    "vocab_size": 8000,
    "context_length": 96,
    "tie_embeddings": False,  # an untied head with a bias: the addmm path
    "lm_head_bias": True,
}

pytestmark = pytest.mark.usefixtures("ce_kernel")


def _model(preset: str, overrides: dict | None = None, sharpen: float = 8.0) -> GPT:
    torch.manual_seed(0)
    cfg = get_preset(preset).model
    for k, v in (overrides or {}).items():
        setattr(cfg, k, v)
    model = GPT(cfg).eval()
    with torch.no_grad():  # peaked next-token distributions: top-k rates far from 0
        model.final_norm.weight.mul_(sharpen)
        if model.lm_head.bias is not None:
            model.lm_head.bias.normal_(0.0, 0.5)
    return model


@torch.no_grad()
def _sample_stream(model: GPT, n: int, seed: int = 0) -> np.ndarray:
    """`n` tokens sampled from the model, in documents of its context length."""
    g = torch.Generator().manual_seed(seed)
    ctx, vocab = model.config.context_length, model.config.vocab_size
    out: list[int] = []
    while len(out) < n:
        cache = model.new_cache(1, ctx)
        tok = torch.randint(0, vocab, (1, 1), generator=g)
        out.append(int(tok))
        for _ in range(ctx - 1):
            if len(out) >= n:
                break
            probs = torch.softmax(model(tok, cache=cache).logits[0, -1], -1)
            tok = torch.multinomial(probs, 1, generator=g).view(1, 1)
            out.append(int(tok))
    return np.asarray(out[:n])


@torch.no_grad()
def _full_logits_reference(
    model: GPT, tokens: np.ndarray, window: int, stride: int, batch: int, eot: int | None
) -> dict:
    """The plain path: full logits, per-row cross-entropy and torch.topk membership."""
    data = torch.as_tensor(tokens, dtype=torch.long)
    spans = window_spans(len(tokens), window, stride)
    nll_sum = content_nll = 0.0
    n = n_content = 0
    hits = dict.fromkeys(TOPK, 0)
    for i in range(0, len(spans), batch):
        for b, e, first in spans[i : i + batch]:  # one window at a time: any batching
            logits = model(data[b:e][None]).logits[0, first:].float()
            tg = data[b + 1 + first : e + 1]
            nll = F.cross_entropy(logits, tg, reduction="none").double()
            content = tg != eot if eot is not None else torch.ones_like(tg, dtype=torch.bool)
            nll_sum += float(nll.sum())
            content_nll += float(nll[content].sum())
            n += len(tg)
            n_content += int(content.sum())
            top = logits.topk(max(TOPK), dim=-1).indices
            for k in TOPK:
                hits[k] += int((top[:, :k] == tg[:, None]).any(-1).sum())
    return {
        "loss": nll_sum / n,
        "content_nll": content_nll,
        "n": n,
        "n_content": n_content,
        "hits": hits,
    }


CASES = [
    # (label, preset, overrides, sharpen, tokens, window, stride, batch)
    ("librarian-1.3m", "librarian-1.3m", None, 8.0, 700, None, None, 3),
    ("librarian-1.3m sliding", "librarian-1.3m", None, 8.0, 500, 128, 40, 8),
    ("lumiere-1m", "lumiere-1m", None, 8.0, 600, 64, 64, 4),
    ("lumiere-1m stride 1", "lumiere-1m", None, 8.0, 120, 32, 1, 16),
    ("llama gqa untied+bias", "lumenbase-128m", SMALL_LLAMA_GQA, 15.0, 600, 96, 50, 5),
]


@pytest.mark.parametrize(
    "preset, overrides, sharpen, n_tokens, window, stride, batch",
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_metrics_equal_the_full_logits_path(
    preset: str,
    overrides: dict | None,
    sharpen: float,
    n_tokens: int,
    window: int | None,
    stride: int | None,
    batch: int,
) -> None:
    model = _model(preset, overrides, sharpen)
    tokens = _sample_stream(model, n_tokens)
    eot = int(tokens[5])  # some targets are "separators": bits per byte leaves them out
    w = window or model.config.context_length
    s = stride or w
    ref = _full_logits_reference(model, tokens, w, s, batch, eot)
    got = evaluate_tokens(
        model, tokens, window, stride, batch, bytes_per_token=3.5, progress=False, eot_id=eot
    )
    assert got.tokens == ref["n"] == n_tokens - 1
    assert got.content_tokens == ref["n_content"]
    assert got.loss == pytest.approx(ref["loss"], rel=1e-5)
    assert got.perplexity == pytest.approx(math.exp(ref["loss"]), rel=1e-5)
    assert got.bits_per_byte == pytest.approx(
        ref["content_nll"] / (math.log(2) * ref["n_content"] * 3.5), rel=1e-5
    )
    assert (got.top1, got.top5, got.top10) == tuple(ref["hits"][k] / ref["n"] for k in TOPK)
    assert 0.02 < got.top1 < got.top10 < 0.99, "the streams must make top-k informative"


@pytest.mark.parametrize("rows", [1, 7, 64])
def test_chunk_size_changes_nothing_and_bounds_the_logits(
    rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tiny chunks give the same metrics; no chunk of logits has more than `rows` rows;
    the head (`lm_head.forward`, the full-logits path) never runs in evaluation."""
    model = _model("lumiere-1m")
    tokens = _sample_stream(model, 300, seed=3)
    base = evaluate_tokens(model, tokens, 64, 48, 4, progress=False)
    seen: list[int] = []
    chunk_logits = CL._chunk_logits

    def spy(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        seen.append(h.shape[0])
        return chunk_logits(h, w, b)

    monkeypatch.setattr(CL, "chunk_rows_for", lambda vocab, *elements: rows)
    monkeypatch.setattr(CL, "_chunk_logits", spy)
    head_calls = []
    model.lm_head.register_forward_hook(lambda *a: head_calls.append(1))
    got = evaluate_tokens(model, tokens, 64, 48, 4, progress=False)
    assert seen and max(seen) <= rows and sum(seen) == got.tokens
    assert head_calls == []
    assert got.loss == pytest.approx(base.loss, rel=1e-6)
    assert (got.top1, got.top5, got.top10) == (base.top1, base.top5, base.top10)


@pytest.mark.parametrize("block_rows", [1, 5, 64])
def test_scoring_block_size_changes_no_bit(
    block_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within a chunk the log-softmax, comparison and sum run block by block
    (`SCORE_BLOCK_ELEMENTS`); every block size, including blocks that do not divide the
    chunk, gives bit for bit the NLL and ranks of scoring each chunk whole, and each
    token_scores call sees at most `block_rows` rows."""
    torch.manual_seed(0)
    v, n = 300, 203
    h, w = torch.randn(n, 32), torch.randn(v, 32)
    targets = torch.randint(0, v, (n,))
    monkeypatch.setattr(CL, "SCORE_BLOCK_ELEMENTS", 1 << 40)
    whole = CL.linear_token_scores(h, w, None, targets, chunk_rows=70)
    seen: list[int] = []
    scores = CL.token_scores

    def spy(logits: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(logits.shape[0])
        return scores(logits, t)

    monkeypatch.setattr(CL, "token_scores", spy)
    monkeypatch.setattr(CL, "SCORE_BLOCK_ELEMENTS", block_rows * v)
    nll, rank = CL.linear_token_scores(h, w, None, targets, chunk_rows=70)
    assert max(seen) <= block_rows and sum(seen) == n
    assert torch.equal(nll, whole[0]) and torch.equal(rank, whole[1])


def test_rank_is_strictly_greater_count_and_equals_topk_without_ties() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 333, generator=g)  # continuous: no ties
    targets = torch.randint(0, 333, (500,), generator=g)
    nll, rank = CL.token_scores(logits, targets)
    assert torch.allclose(nll, F.cross_entropy(logits, targets, reduction="none"), atol=1e-6)
    top = logits.topk(10, dim=-1).indices
    for k in TOPK:
        assert torch.equal(rank < k, (top[:, :k] == targets[:, None]).any(-1))
    # the tie rule: only strictly greater logits count against the target
    tied = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0, 2.0]])
    _, r = CL.token_scores(tied, torch.tensor([2, 4]))
    assert r.tolist() == [0, 0]  # tied for the top: a top-1 hit, whichever id topk picks
    _, r = CL.token_scores(tied, torch.tensor([0, 0]))
    assert r.tolist() == [3, 0]


def test_linear_token_scores_in_bf16_equal_the_bf16_head() -> None:
    """A bf16 model (`--dtype bf16`): logits computed in bf16 as nn.Linear does, scored in
    fp32; chunks of >= 16 rows give the very same logits as the whole matmul."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(96, 64, generator=g).bfloat16()
    head = torch.nn.Linear(64, 300).bfloat16()
    targets = torch.randint(0, 300, (96,), generator=g)
    nll, rank = CL.linear_token_scores(h, head.weight, head.bias, targets, chunk_rows=32)
    ref_nll, ref_rank = CL.token_scores(head(h).float(), targets)
    assert torch.allclose(nll, ref_nll, rtol=1e-6, atol=1e-6)
    assert torch.equal(rank, ref_rank)


def test_rolling_equals_full_logits_sum() -> None:
    model = _model("lumenbase-128m", {**SMALL_LLAMA_GQA, "context_length": 24})
    g = torch.Generator().manual_seed(2)
    docs = [torch.randint(1, 8000, (n,), generator=g).tolist() for n in (3, 24, 25, 60)]
    got = rolling_loglikelihoods(model, docs, prefix_id=0, batch_size=3, progress=False)
    for doc, value in zip(docs, got):
        stream = torch.tensor([0, *doc])
        ref = 0.0
        for b, e, first in rolling_spans(len(doc), 24):
            with torch.no_grad():
                logits = model(stream[b:e][None]).logits[0, first:].float()
            ref -= float(F.cross_entropy(logits, stream[b + 1 + first : e + 1], reduction="sum"))
        assert value == pytest.approx(ref, rel=1e-5)


def test_an_inf_logit_is_an_error_not_a_number() -> None:
    model = _model("lumenbase-128m", SMALL_LLAMA_GQA)
    with torch.no_grad():
        model.lm_head.bias[11] = float("inf")  # one vocabulary entry: every row's lse is inf
    with pytest.raises(LumenError, match="non-finite logits"):
        evaluate_tokens(model, np.arange(200) % 97, 96, progress=False)
    with pytest.raises(LumenError, match="non-finite logits"):
        rolling_loglikelihoods(model, [[1, 2, 3]], prefix_id=0, progress=False)
