"""Multiple-choice scoring: lm-eval's encoding, shared-context batching, metrics, chance level."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lumenlm.cli import main
from lumenlm.errors import ConfigError, LumenError
from lumenlm.evaluate import MCItem, encode_pair, evaluate_tasks, load_task, score_items
from lumenlm.evaluate.multiple_choice import (
    encode_item,
    item_result,
    mean_stderr,
    score_naive,
    score_shared,
    tokenizer_encoder,
)
from lumenlm.model import GPT
from lumenlm.modelio import save_model
from lumenlm.presets import get_preset

WORDS = (
    "the a man woman dog sun water plant energy question answer which what is are was to of "
    "and in on for with light heat cells animals rocks earth moon food grows eats runs jumps "
    "because when then scientist experiment measure change temperature gas liquid solid"
).split()


def training_text() -> str:
    """A few KB of text with the words and punctuation the tasks use."""
    g = torch.Generator().manual_seed(0)
    sents = []
    for i in range(300):
        idx = torch.randint(0, len(WORDS), (8,), generator=g).tolist()
        words = " ".join(WORDS[j] for j in idx)
        sents.append(f"Question: {words.capitalize()}?\nAnswer: {WORDS[i % len(WORDS)]}.")
    return "\n".join(sents)


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([training_text()], trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def tokenizer(tokenizer_file: Path) -> Tokenizer:
    return Tokenizer.from_file(str(tokenizer_file))


def test_encode_pair_moves_trailing_spaces(tokenizer: Tokenizer) -> None:
    enc = tokenizer_encoder(tokenizer)
    ctx, cont = encode_pair(enc, "Question: what is the sun?\nAnswer: ", "energy")
    assert ctx == enc("Question: what is the sun?\nAnswer:")
    assert ctx + cont == enc("Question: what is the sun?\nAnswer: energy")
    assert enc(" energy") == cont  # the space now starts the continuation


def test_encode_pair_splits_whole_encoding_at_context_length() -> None:
    # a tokenizer whose merge crosses the boundary: lm-eval keeps whole[len(ctx):]
    vocab = ["ab", "a", "b", "c"]

    def enc(text: str) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            for j, piece in enumerate(vocab):
                if text.startswith(piece, i):
                    ids.append(j)
                    i += len(piece)
                    break
            else:
                raise AssertionError(text[i])
        return ids

    assert encode_pair(enc, "a", "bc") == ([1], [3])  # whole = [ab, c]; ctx = [a]


def test_acc_norm_divides_by_choice_characters() -> None:
    item = MCItem("x", "ctx", ("ab", "abcdefgh", "abc"), gold=1)
    r = item_result(item, [(-10.0, False), (-12.0, False), (-13.0, False)])
    assert (r.pred, r.pred_norm) == (0, 1)  # -5 vs -1.5 vs -4.33 per character
    assert r.choice_chars == [2, 8, 3] and (r.acc, r.acc_norm) == (0.0, 1.0)
    tie = item_result(item, [(-1.0, True), (-1.0, True), (-2.0, True)])
    assert tie.pred == 0  # numpy argmax: first of equals
    assert mean_stderr([1.0, 0.0, 0.0, 1.0]) == pytest.approx(math.sqrt(1 / 3) / 2)


@pytest.mark.parametrize("preset", ["tiny", "tiny-gpt2"])
def test_shared_context_equals_separate_scoring(
    preset: str, tokenizer: Tokenizer, shared_data: Path
) -> None:
    model = GPT(get_preset(preset).model).eval()
    enc = tokenizer_encoder(tokenizer)
    items = load_task("arc-easy", shared_data, limit=40) + load_task(
        "hellaswag", shared_data, limit=8
    )
    encoded = [encode_item(enc, it) for it in items]
    fits = [e for e in encoded if e.fits(64)]
    assert 5 < len(fits) < len(encoded)  # both paths are exercised below
    shared = score_shared(model, fits)
    for e, got in zip(fits, shared):
        one_by_one = [score_naive(model, [(e.context, c)])[0] for c in e.continuations]
        for (a, ga), (b, gb) in zip(got, one_by_one):
            assert a == pytest.approx(b, abs=1e-4) and ga == gb
    fast = score_items(model, enc, items, batch_size=7, shared=True, progress=False)
    slow = score_items(model, enc, items, batch_size=3, shared=False, progress=False)
    for a, b in zip(fast, slow):
        assert a.id == b.id and a.pred == b.pred and a.pred_norm == b.pred_norm
        assert a.loglikelihoods == pytest.approx(b.loglikelihoods, abs=1e-4)


def test_truncation_keeps_the_last_tokens(tokenizer: Tokenizer) -> None:
    model = GPT(get_preset("tiny").model).eval()
    enc = tokenizer_encoder(tokenizer)
    long_ctx = "Question: " + " ".join(WORDS * 3) + "\nAnswer:"
    ctx, cont = encode_pair(enc, long_ctx, " energy")
    assert len(ctx) + len(cont) > 65
    (got,) = score_naive(model, [(ctx, cont)])
    row = (ctx + cont)[-65:]
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([row[:-1]])).logits[0].float(), -1)
    ref = sum(float(lp[len(row) - 1 - len(cont) + i, t]) for i, t in enumerate(cont))
    assert got[0] == pytest.approx(ref, abs=1e-5)


def test_random_init_model_near_chance(tokenizer: Tokenizer, shared_data: Path) -> None:
    torch.manual_seed(0)
    model = GPT(get_preset("tiny").model).eval()
    results = evaluate_tasks(
        model,
        ["arc-easy", "arc-challenge", "hellaswag"],
        tokenizer,
        shared_data,
        limit=300,
        batch_size=32,
        progress=False,
    )
    for name, res in results.items():
        assert res.total == 300, name
        # chance is about 25% (a few ARC items have 3 or 5 choices); 300 items: stderr ~2.5%
        assert 0.15 <= res.acc <= 0.36, (name, res.acc)
        assert 0.15 <= res.acc_norm <= 0.36, (name, res.acc_norm)
        assert res.acc_stderr == pytest.approx(
            math.sqrt(res.acc * (1 - res.acc) * 300 / 299) / math.sqrt(300)
        )


def test_cli_tasks_report_and_per_example(
    tmp_path: Path, tokenizer_file: Path, shared_data: Path, capsys: pytest.CaptureFixture
) -> None:
    save_model(GPT(get_preset("tiny").model), tmp_path / "model", tokenizer_path=tokenizer_file)
    out, per = tmp_path / "r.json", tmp_path / "ex.jsonl"
    rc = main(
        [
            "eval",
            str(tmp_path / "model"),
            "--tasks",
            "arc-easy,hellaswag",
            "--tasks-dir",
            str(shared_data),
            "--limit",
            "12",
            "--batch-size",
            "5",
            "--out",
            str(out),
            "--per-example",
            str(per),
            "--no-download",
        ]
    )
    assert rc == 0
    table = capsys.readouterr().out
    assert "arc-easy" in table and "hellaswag" in table and "/12" in table
    doc = json.loads(out.read_text())
    assert "lm" not in doc
    for name in ("arc-easy", "hellaswag"):
        t = doc["tasks"][name]
        assert {"acc", "acc_norm", "correct", "total", "stderr"} <= set(t)
        assert t["total"] == 12 and t["acc"] == pytest.approx(t["correct"] / 12)
    lines = [json.loads(x) for x in per.read_text().splitlines()]
    assert len(lines) == 24
    assert {"task", "id", "gold", "pred", "pred_norm", "loglikelihoods"} <= set(lines[0])
    assert (
        sum(x["acc"] for x in lines if x["task"] == "arc-easy")
        == doc["tasks"]["arc-easy"]["correct"]
    )


def test_choice_longer_than_context_is_scored_on_its_tail(tokenizer: Tokenizer) -> None:
    model = GPT(get_preset("tiny").model).eval()
    enc = tokenizer_encoder(tokenizer)
    item = MCItem("long", "Question: x?\nAnswer:", ("short", " ".join(WORDS * 2)), 0)
    (res,) = score_items(model, enc, [item], progress=False)
    assert res.truncated and res.overlong
    ctx, cont = encode_pair(enc, item.context, " " + item.choices[1])
    row = (ctx + cont)[-65:-1]
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([row])).logits[0].float(), -1)
    ref = sum(float(lp[i, t]) for i, t in enumerate(cont[-64:]))
    assert res.loglikelihoods[1] == pytest.approx(ref, abs=1e-4)


def test_non_finite_loglikelihood_is_an_error() -> None:
    item = MCItem("q7", "Question: what?", ("a", "b"), 0)
    assert item_result(item, [(-1.0, True), (-2.0, False)]).pred == 0
    for bad in (float("nan"), float("-inf")):
        with pytest.raises(LumenError, match=r"question q7: .* non-finite"):
            item_result(item, [(-1.0, True), (bad, False)])


def test_evaluate_tasks_refuses_zero_sizes(tokenizer: Tokenizer) -> None:
    model = GPT(get_preset("tiny").model)
    for kwargs in ({"limit": 0}, {"limit": -2}, {"batch_size": 0}):
        with pytest.raises(ConfigError, match="must be >= 1"):
            evaluate_tasks(model, ["arc-easy"], tokenizer, **kwargs)


def _reference(model: GPT, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    """lm-eval's score of one request from the full logits of its own row."""
    row = (ctx + cont)[-65:]
    width = min(len(cont), 64)
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([row[:-1]])).logits[0].float(), -1)
    at = range(len(row) - 1 - width, len(row) - 1)
    wanted = cont[-width:]
    ll = sum(float(lp[p, t]) for p, t in zip(at, wanted))
    greedy = all(int(lp[p].argmax()) == t for p, t in zip(at, wanted))
    return ll, greedy


@pytest.mark.parametrize("preset", ["tiny", "tiny-gpt2"])
def test_scores_equal_full_logits_and_head_runs_only_where_scored(
    preset: str, tokenizer: Tokenizer, shared_data: Path
) -> None:
    torch.manual_seed(1)
    model = GPT(get_preset(preset).model).eval()
    enc = tokenizer_encoder(tokenizer)
    items = load_task("arc-easy", shared_data, limit=12) + load_task(
        "hellaswag", shared_data, limit=6
    )
    encoded = [encode_item(enc, it) for it in items]
    rows: list[int] = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    try:
        for shared in (True, False):
            rows.clear()
            got = score_items(model, enc, items, batch_size=5, shared=shared, progress=False)
            # the head saw only scored positions: every continuation token once, except
            # that a shared question scores all its choices' first tokens from one row
            want_rows = 0
            for e in encoded:
                conts = [c[-64:] for c in e.continuations]
                if shared and e.fits(64):
                    want_rows += 1 + sum(len(c) - 1 for c in conts)
                else:
                    want_rows += sum(len(c) for c in conts)
            assert sum(rows) == want_rows
            for e, r in zip(encoded, got):
                for c, ll, greedy in zip(e.continuations, r.loglikelihoods, r.is_greedy):
                    ref_ll, ref_greedy = _reference(model, e.context, c)
                    assert ll == pytest.approx(ref_ll, abs=1e-4) and greedy == ref_greedy
    finally:
        hook.remove()
