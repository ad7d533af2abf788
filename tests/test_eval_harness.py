"""`lumenlm eval --harness`: lm-evaluation-harness in process through `LumenHarnessLM`.

Fast tests call the adapter's three request types directly with lm-eval `Instance`s and
compare with lumenlm's own scorers and generator; the CLI refuses a missing extra in one
line. The slow tests run `lm_eval.simple_evaluate` on local task files: ARC-Easy gives the
same choice, acc and acc_norm as ``--tasks arc-easy`` on every question, and the official
wikitext task's rolling log-likelihoods give ``--tasks wikitext``'s word perplexity.

Run the slow ones with: pytest -m slow tests/test_eval_harness.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from lmeval_helpers import local_arc_task, local_wikitext_task, offline_hf
from lumenlm.cli import main
from lumenlm.errors import LumenError
from lumenlm.evaluate import evaluate_tasks, load_task, score_items, tokenizer_encoder
from lumenlm.evaluate.rolling import rolling_loglikelihoods
from lumenlm.evaluate.wikitext import evaluate_wikitext, wikitext_pages
from lumenlm.infer import generate
from lumenlm.model import GPT
from lumenlm.modelio import load, save_model
from lumenlm.presets import get_preset

pytest.importorskip("lm_eval", reason="pip install 'lumenlm[harness]'")
from lm_eval.api.instance import Instance

from lumenlm.evaluate.harness import LumenHarnessLM


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_helpers import make_tokenizer

    root = tmp_path_factory.mktemp("harness")
    tok = make_tokenizer(root / "tokenizer.json")
    torch.manual_seed(0)
    cfg = get_preset("tiny-gpt2").model
    cfg.vocab_size = 300
    return save_model(GPT(cfg).eval(), root / "model", tokenizer_path=tok)


def _req(kind: str, args: tuple, doc_id: int, idx: int = 0) -> Instance:
    return Instance(kind, {}, args, idx, metadata=("t", doc_id, 1))


def test_loglikelihood_is_lumenlms_multiple_choice_scoring(
    model_path: Path, shared_data: Path
) -> None:
    model = load(model_path)
    items = load_task("arc-easy", shared_data, limit=12)
    ours = score_items(model, tokenizer_encoder(model.tokenizer), items, batch_size=5)
    reqs = [
        _req("loglikelihood", (it.context, " " + c), doc, j)
        for doc, it in enumerate(items)
        for j, c in enumerate(it.choices)
    ]
    got = LumenHarnessLM(model, batch_size=5).loglikelihood(reqs)
    flat = [(ll, g) for r in ours for ll, g in zip(r.loglikelihoods, r.is_greedy)]
    assert got == flat  # the same batches: equal bit for bit


def test_loglikelihood_empty_context_uses_the_prefix_token(model_path: Path) -> None:
    model = load(model_path)
    lm = LumenHarnessLM(model)
    [(ll, _)] = lm.loglikelihood([_req("loglikelihood", ("", "the cat sat"), 0)])
    ids = model.tokenizer.encode("the cat sat").ids
    ref = rolling_loglikelihoods(model, [ids], lm.prefix_id, progress=False)[0]
    assert ll == pytest.approx(ref, rel=1e-5)


def test_loglikelihood_rolling_and_generate_until(model_path: Path) -> None:
    model = load(model_path)
    lm = LumenHarnessLM(model, batch_size=2, max_gen_toks=12)
    texts = ["the cat sat on the mat. " * 9, "hello", "a dog ran to the house."]
    got = lm.loglikelihood_rolling(
        [_req("loglikelihood_rolling", (t,), i) for i, t in enumerate(texts)]
    )
    ids = [model.tokenizer.encode(t).ids for t in texts]
    assert got == pytest.approx(rolling_loglikelihoods(model, ids, lm.prefix_id, progress=False))

    prompts = ["once upon a time", "the little girl"]
    gen_kwargs = {"until": [" moon"], "do_sample": False}
    outs = lm.generate_until(
        [_req("generate_until", (p, gen_kwargs), i) for i, p in enumerate(prompts)]
    )
    ref = generate(model, prompts, temperature=0.0, max_new_tokens=12, stop=[" moon"])
    assert outs == [r.text for r in ref]
    assert all(" moon" not in o for o in outs)
    # lm-eval's default max_gen_toks exceeds this model's 64 positions: the context is
    # cut to one token and decoding slides, instead of lm-eval's assertion
    [long] = LumenHarnessLM(model).generate_until([_req("generate_until", ("the", {}), 0)])
    assert isinstance(long, str)


def test_missing_extra_is_one_line_naming_the_install(
    model_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import lumenlm.evaluate

    monkeypatch.delitem(sys.modules, "lumenlm.evaluate.harness")
    monkeypatch.delattr(lumenlm.evaluate, "harness")
    for name in [m for m in sys.modules if m == "lm_eval" or m.startswith("lm_eval.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(LumenError, match=r"pip install 'lumenlm\[harness\]'"):
        import lumenlm.evaluate.harness
    monkeypatch.delitem(sys.modules, "lumenlm.evaluate.harness", raising=False)
    assert main(["eval", str(model_path), "--harness", "arc_easy"]) != 0
    err = capsys.readouterr().err.strip()
    assert "pip install 'lumenlm[harness]'" in err and len(err.splitlines()) == 1


def test_cli_harness_argument_errors(model_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", str(model_path), "--tasks", "arc-easy", "--num-fewshot", "2"]) != 0
    assert "need --harness" in capsys.readouterr().err
    assert main(["eval", str(model_path), "--harness", " , "]) != 0
    assert "--harness needs task names" in capsys.readouterr().err
    argv = ["eval", str(model_path), "--harness", "x", "--harness-include", "/nonexistent"]
    assert main(argv) != 0
    assert "not a folder of task YAML files" in capsys.readouterr().err


@pytest.mark.slow  # indexes all of lm-eval's built-in task YAMLs (minutes on 2 cores)
def test_cli_harness_unknown_task(model_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", str(model_path), "--harness", "no_such_task_xyz"]) != 0
    err = capsys.readouterr().err.strip()
    assert "unknown harness task" in err and len(err.splitlines()) == 1


# ----------------------------------------------------------------------------- simple_evaluate


@pytest.mark.slow
def test_harness_arc_easy_equals_lumenlm_on_every_question(
    model_path: Path, tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lumenlm.evaluate.harness import run_harness

    offline_hf(monkeypatch, tmp_path)
    model = load(model_path)
    task = local_arc_task(tmp_path / "tasks", shared_data / "arc" / "ARC-Easy-Test.jsonl")
    out = run_harness(model, [task], include_path=tmp_path / "tasks", log_samples=True)
    ours = evaluate_tasks(model, ["arc-easy"], tasks_dir=shared_data, progress=False)["arc-easy"]
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    assert len(samples) == ours.total == 2376
    for s, r in zip(samples, ours.items):
        assert s["doc"]["id"] == r.id
        assert [float(x[0]) for x in s["filtered_resps"]] == r.loglikelihoods
        assert (s["acc"], s["acc_norm"]) == (r.acc, r.acc_norm), r.id
    res = out["results"][task]
    assert res["acc,none"] == pytest.approx(ours.acc, abs=1e-12)
    assert res["acc_norm,none"] == pytest.approx(ours.acc_norm, abs=1e-12)
    assert res["acc_stderr,none"] == pytest.approx(ours.acc_stderr, rel=1e-9)


@pytest.mark.slow
def test_harness_wikitext_equals_lumenlm_word_perplexity(
    model_path: Path, tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lumenlm.evaluate.harness import run_harness

    offline_hf(monkeypatch, tmp_path)
    model = load(model_path)
    limit = 8
    text = (shared_data / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8")
    task = local_wikitext_task(tmp_path / "tasks", wikitext_pages(text)[:limit])
    out = run_harness(model, [task], include_path=tmp_path / "tasks")
    ours = evaluate_wikitext(model, tasks_dir=shared_data, limit=limit, progress=False)
    res = out["results"][task]
    assert res["word_perplexity,none"] == pytest.approx(ours.word_perplexity, rel=1e-9)
    assert res["byte_perplexity,none"] == pytest.approx(ours.byte_perplexity, rel=1e-9)
    assert res["bits_per_byte,none"] == pytest.approx(ours.bits_per_byte, rel=1e-9)


@pytest.mark.slow
def test_cli_harness_with_local_task_writes_lm_evals_results(
    model_path: Path, tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    offline_hf(monkeypatch, tmp_path)
    task = local_arc_task(tmp_path / "tasks", shared_data / "arc" / "ARC-Easy-Test.jsonl")
    out = tmp_path / "r.json"
    argv = ["eval", str(model_path), "--harness", task, "--harness-include"]
    argv += [str(tmp_path / "tasks"), "--limit", "40", "--out", str(out)]
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    ours = evaluate_tasks(load(model_path), ["arc-easy"], tasks_dir=shared_data, limit=40)
    assert doc["harness"]["results"][task]["acc,none"] == pytest.approx(ours["arc-easy"].acc)
    assert doc["harness"]["n-samples"][task]["effective"] == 40
    assert doc["harness"]["lm_eval_version"].startswith("0.4.")
