"""WikiText word perplexity as lm-evaluation-harness's `wikitext` task computes it.

Fast tests check each piece against lm-eval's own code (its rolling windows, its
detokenizer and word counts, and a reference scorer built on `get_rolling_token_windows`
that runs one window at a time); the slow test runs lm-eval itself (model "hf") on an
HF export of two tiny models with the official wikitext task config pointed at the
local test file, and asks for the same word perplexity, byte perplexity and bits per byte.

Run the slow one with: pytest -m slow tests/test_eval_wikitext.py
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
from pathlib import Path

import pytest
import torch

from lmeval_helpers import (
    lm_eval_tasks_dir,
    local_wikitext_task,
    offline_hf,
    train_model,
    train_tokenizer,
)
from lumenlm.cli import main
from lumenlm.errors import ConfigError
from lumenlm.evaluate import evaluate_tasks
from lumenlm.evaluate.rolling import rolling_loglikelihoods, rolling_spans
from lumenlm.evaluate.wikitext import (
    count_words,
    evaluate_wikitext,
    wikitext_detokenizer,
    wikitext_pages,
)
from lumenlm.model import GPT
from lumenlm.modelio import save_model
from lumenlm.presets import get_preset

lm_eval_utils = pytest.importorskip("lm_eval.utils", reason="pip install 'lumenlm[harness]'")


def _official_preprocess():
    """lm-eval's own `preprocess_wikitext` module (detokenizer, process_results)."""
    path = lm_eval_tasks_dir() / "wikitext" / "preprocess_wikitext.py"
    spec = importlib.util.spec_from_file_location("official_preprocess_wikitext", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _raw(shared_data: Path, name: str) -> str:
    return (shared_data / "wikitext-2-raw" / name).read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- windows


@pytest.mark.parametrize("max_length", [1, 2, 5, 8])
def test_rolling_spans_are_lm_evals_windows(max_length: int) -> None:
    for n in range(0, 4 * max_length + 3):
        tokens = list(range(100, 100 + n))
        stream = [-1, *tokens]
        ref = [
            lm_eval_utils.make_disjoint_window(w)
            for w in lm_eval_utils.get_rolling_token_windows(tokens, -1, max_length, 1)
        ]
        ours = rolling_spans(n, max_length)
        assert len(ours) == len(ref), (n, max_length)
        for (begin, end, first), (ctx, cont) in zip(ours, ref):
            # lm-eval's model input for (ctx, cont) and the targets it scores
            assert stream[begin:end] == (ctx + cont)[-(max_length + 1) :][:-1]
            assert stream[begin + 1 + first : end + 1] == cont
        assert sum(end - begin - first for begin, end, first in ours) == n  # each token once


def _tiny(preset: str, vocab: int = 97, context: int = 16) -> GPT:
    torch.manual_seed(0)
    cfg = get_preset(preset).model
    cfg.vocab_size, cfg.context_length = vocab, context
    return GPT(cfg).eval()


def _reference_rolling(model: GPT, tokens: list[int], prefix: int) -> float:
    """lm-eval's HF scoring, one window per forward pass, from lm-eval's own windows."""
    L = model.config.context_length
    total = 0.0
    for ctx, cont in map(
        lm_eval_utils.make_disjoint_window,
        lm_eval_utils.get_rolling_token_windows(tokens, prefix, L, 1),
    ):
        inp = (ctx + cont)[-(L + 1) :][:-1]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([inp])).logits[0].float(), -1)
        picked = logp[len(inp) - len(cont) :].gather(-1, torch.tensor(cont)[:, None])
        total += float(picked.sum())
    return total


@pytest.mark.parametrize("preset", ["tiny", "tiny-gpt2"])
def test_rolling_loglikelihoods_match_window_by_window_reference(preset: str) -> None:
    model = _tiny(preset)
    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(1, 97, (n,), generator=g).tolist() for n in (1, 5, 16, 17, 40, 33)]
    ours = rolling_loglikelihoods(model, docs, prefix_id=0, batch_size=3, progress=False)
    one = rolling_loglikelihoods(model, docs, prefix_id=0, batch_size=1, progress=False)
    for doc, a, b in zip(docs, ours, one):
        ref = _reference_rolling(model, doc, 0)
        assert a == pytest.approx(ref, rel=1e-5, abs=1e-4)
        assert a == pytest.approx(b, rel=1e-6, abs=1e-5)  # batching is invisible
    assert rolling_loglikelihoods(model, [[]], 0, progress=False) == [0.0]


# ----------------------------------------------------------------------------- documents


def test_pages_are_the_document_level_split(shared_data: Path) -> None:
    # EleutherAI/wikitext_document_level, wikitext-2-raw-v1: 62 test and 60 validation pages
    for name, count, title in (
        ("wiki.test.raw", 62, " = Robert Boulter = "),
        ("wiki.valid.raw", 60, " = Homarus gammarus = "),
    ):
        text = _raw(shared_data, name)
        pages = wikitext_pages(text)
        assert len(pages) == count
        assert pages[0].startswith(title + "\n")
        # nothing lost but the blank line before the first title
        assert "\n".join([" ", *pages]) == text
        assert all(p.split("\n")[0].strip().startswith("= ") for p in pages)


def test_pages_rules_on_small_text() -> None:
    text = " \n = A = \n x \n = = Sub = = \n y \n = = = Deeper = = = \n = B = \n z \n"
    assert wikitext_pages(text) == [
        " = A = \n x \n = = Sub = = \n y \n = = = Deeper = = = ",
        " = B = \n z \n",
    ]
    assert wikitext_pages(" = A = \n = B = \n") == [" = A = ", " = B = \n"]
    assert wikitext_pages("") == [""]  # the last page is kept, as the dataset script does


def test_detokenizer_and_counts_are_lm_evals(shared_data: Path) -> None:
    official = _official_preprocess()
    for name in ("wiki.test.raw", "wiki.valid.raw"):
        for page in wikitext_pages(_raw(shared_data, name)):
            doc = {"page": page}
            assert wikitext_detokenizer(page) == official.wikitext_detokenizer(doc)
            metrics = official.process_results(doc, (-1.5,))
            assert metrics["word_perplexity"] == (-1.5, count_words(page))
            assert metrics["bits_per_byte"] == (-1.5, len(page.encode("utf-8")))


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def wiki_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_helpers import make_tokenizer

    root = tmp_path_factory.mktemp("wiki")
    tok = make_tokenizer(root / "tokenizer.json")
    torch.manual_seed(0)
    cfg = get_preset("tiny").model
    cfg.vocab_size = 300
    return save_model(GPT(cfg).eval(), root / "model", tokenizer_path=tok)


def test_evaluate_wikitext_numbers_follow_lm_evals_formulas(
    wiki_model: Path, shared_data: Path, tmp_path: Path
) -> None:
    from lumenlm.modelio import load

    # three short articles cut from the real test file (a window-by-window reference
    # on whole articles would be slow): the first 12 lines of each
    real = wikitext_pages(_raw(shared_data, "wiki.test.raw"))[:3]
    text = "".join("\n".join(p.split("\n")[:12]) + "\n" for p in real)
    (tmp_path / "wikitext-2-raw").mkdir()
    (tmp_path / "wikitext-2-raw" / "wiki.test.raw").write_text(text, encoding="utf-8")
    model = load(wiki_model)
    res = evaluate_wikitext(model, tasks_dir=tmp_path, progress=False)
    pages = wikitext_pages(text)
    tok = model.tokenizer
    prefix = tok.token_to_id("<|endoftext|>")
    lls = [
        _reference_rolling(model, tok.encode(wikitext_detokenizer(p)).ids, prefix) for p in pages
    ]
    words = sum(len(re.split(r"\s+", p)) for p in pages)
    nbytes = sum(len(p.encode()) for p in pages)
    assert (res.documents, res.words, res.bytes, res.split) == (3, words, nbytes, "test")
    assert res.official_file is False  # not the official bytes, and it says so
    assert res.word_perplexity == pytest.approx(math.exp(-sum(lls) / words), rel=1e-5)
    assert res.byte_perplexity == pytest.approx(math.exp(-sum(lls) / nbytes), rel=1e-5)
    assert res.bits_per_byte == pytest.approx(-sum(lls) / nbytes / math.log(2), rel=1e-5)
    assert res.token_perplexity == pytest.approx(math.exp(-sum(lls) / res.tokens), rel=1e-5)


def test_cli_tasks_wikitext_json_and_per_document(
    wiki_model: Path, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out, per = tmp_path / "r.json", tmp_path / "docs.jsonl"
    argv = ["eval", str(wiki_model), "--tasks", "wikitext", "--limit", "1"]
    argv += ["--tasks-dir", str(shared_data), "--out", str(out), "--per-example", str(per)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "word perplexity" in printed and "bits per byte" in printed
    doc = json.loads(out.read_text())["tasks"]["wikitext"]
    from lumenlm.modelio import load

    ref = evaluate_tasks(load(wiki_model), ["wikitext"], tasks_dir=shared_data, limit=1)
    assert doc["word_perplexity"] == pytest.approx(ref["wikitext"].word_perplexity, rel=1e-9)
    assert doc["bits_per_byte"] == pytest.approx(ref["wikitext"].bits_per_byte, rel=1e-9)
    assert doc["documents"] == 1 and doc["file"].endswith("wiki.test.raw")
    assert doc["official_file"] is True
    [line] = [json.loads(x) for x in per.read_text().splitlines()]
    assert line["task"] == "wikitext" and line["words"] == doc["words"]
    assert line["loglikelihood"] == pytest.approx(doc["loglikelihood"])


def test_wikitext_offline_without_files_says_where_to_put_them(
    wiki_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lumenlm.errors import DataError
    from lumenlm.modelio import load

    monkeypatch.delenv("LUMENLM_DATA", raising=False)
    monkeypatch.setenv("LUMENLM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="wikitext-2") as err:
        evaluate_wikitext(load(wiki_model), tasks_dir=tmp_path, download=False)
    assert len(str(err.value).splitlines()) == 1
    with pytest.raises(ConfigError, match="limit"):
        evaluate_wikitext(load(wiki_model), limit=0)


# ----------------------------------------------------------------------------- vs lm-eval

WIKI_LIMIT = int(os.environ.get("LUMENLM_WIKITEXT_LIMIT", "62"))  # all of the test split


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny"])
def test_word_perplexity_equals_lm_eval_on_hf_export(
    preset: str, tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lm_eval = pytest.importorskip("lm_eval", reason="pip install 'lumenlm[crosscheck]'")
    from lm_eval.tasks import TaskManager

    from lumenlm.export.hf import export_hf

    offline_hf(monkeypatch, tmp_path)
    train_text = _raw(shared_data, "wiki.valid.raw")  # train on validation, score test
    tok = train_tokenizer(train_text, tmp_path / "tokenizer.json")
    model = train_model(preset, tok.encode(train_text).ids, steps=150, context_length=64)
    hf_dir = export_hf(model, tmp_path / "hf", tokenizer_path=tmp_path / "tokenizer.json")

    ours = evaluate_wikitext(model, tok, shared_data, limit=WIKI_LIMIT, progress=False)
    pages = wikitext_pages(_raw(shared_data, "wiki.test.raw"))[:WIKI_LIMIT]
    task = local_wikitext_task(tmp_path / "tasks", pages)
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={hf_dir},dtype=float32",
        tasks=[task],
        task_manager=TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False),
        batch_size=32,
        device="cpu",
        log_samples=True,
    )
    res = out["results"][task]
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    ref_ll = [float(s["filtered_resps"][0]) for s in samples]
    ours_ll = [d["loglikelihood"] for d in ours.per_document]
    assert len(ref_ll) == len(ours_ll) == WIKI_LIMIT
    assert max(abs(a - b) / abs(b) for a, b in zip(ours_ll, ref_ll)) < 1e-5
    assert ours.word_perplexity == pytest.approx(res["word_perplexity,none"], rel=1e-4)
    assert ours.byte_perplexity == pytest.approx(res["byte_perplexity,none"], rel=1e-5)
    assert ours.bits_per_byte == pytest.approx(res["bits_per_byte,none"], rel=1e-5)
    print(
        f"{preset}: word ppl lumenlm {ours.word_perplexity:.6f} lm-eval "
        f"{res['word_perplexity,none']:.6f}; bits/byte {ours.bits_per_byte:.6f} vs "
        f"{res['bits_per_byte,none']:.6f}"
    )
