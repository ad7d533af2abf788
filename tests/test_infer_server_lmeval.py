"""lm-evaluation-harness's `local-completions` backend scores ARC-Easy through
`lumenlm serve` (its prompt logprobs via `echo` + `logprobs`) with the same choices,
and so the same acc and acc_norm, as `lumenlm eval` on the same model.

A small model is trained briefly on ARC-Easy-Train (as in test_eval_lmeval_crosscheck),
at a context of 256 so that nearly no question needs truncating: the two truncate
differently (the API backend keeps one token of context less, leaving room for the one
token it asks the server to generate), so the per-choice log-likelihoods are compared on
the questions that fit whole (all but a few); the choices and accuracies on all of them.
lm-eval tokenizes with a transformers fast tokenizer built from the same tokenizer.json.
Slow: `pytest -m slow tests/test_infer_server_lmeval.py` (LUMENLM_SERVER_LMEVAL_LIMIT
questions, default 300).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from infer_helpers import serve_app
from lmeval_helpers import local_arc_task, offline_hf, train_model, train_tokenizer
from lumenlm.evaluate import evaluate_tasks
from lumenlm.infer.server import create_app
from lumenlm.modelio import load, save_model

pytestmark = pytest.mark.slow

LIMIT = int(os.environ.get("LUMENLM_SERVER_LMEVAL_LIMIT", "300"))
CTX = 256


def test_local_completions_scores_arc_like_lumenlm_eval(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lm_eval = pytest.importorskip("lm_eval", reason="pip install lm-eval for the cross-check")
    pytest.importorskip(
        "tenacity", reason="lm-eval's API backend needs it: pip install .[crosscheck]"
    )
    from lm_eval.tasks import TaskManager
    from transformers import PreTrainedTokenizerFast

    offline_hf(monkeypatch, tmp_path)
    arc_dir = shared_data / "arc"
    train_text = "\n".join(
        "Question: {}\nAnswer: {}".format(
            d["question"]["stem"],
            next(c["text"] for c in d["question"]["choices"] if c["label"] == d["answerKey"]),
        )
        for d in map(json.loads, (arc_dir / "ARC-Easy-Train.jsonl").read_text().splitlines())
    )
    tok_path = tmp_path / "tokenizer.json"
    tok = train_tokenizer(train_text, tok_path)
    trained = train_model("tiny", tok.encode(train_text).ids, context_length=CTX)
    save_model(trained, tmp_path / "arc-model", tokenizer_path=tok_path)
    model = load(tmp_path / "arc-model")
    hf_tok_dir = tmp_path / "hf_tok"
    PreTrainedTokenizerFast(tokenizer_file=str(tok_path)).save_pretrained(hf_tok_dir)

    ours = evaluate_tasks(model, ["arc-easy"], tok, shared_data, limit=LIMIT, progress=False)
    task = local_arc_task(tmp_path / "tasks", arc_dir / "ARC-Easy-Test.jsonl")
    app = create_app(model, model.tokenizer, model_name="arc-model", slots=16, ui=False)
    for url in serve_app(app):
        out = lm_eval.simple_evaluate(
            model="local-completions",
            model_args=(
                f"base_url={url}/v1/completions,model=arc-model,tokenizer={hf_tok_dir},"
                f"tokenizer_backend=huggingface,max_length={CTX + 1},num_concurrent=2,"
                "max_retries=1,batch_size=16"
            ),
            tasks=[task],
            task_manager=TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False),
            limit=LIMIT,
            log_samples=True,
        )
    samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
    items = ours["arc-easy"].items
    assert len(samples) == len(items) == LIMIT
    hf_tok = PreTrainedTokenizerFast(tokenizer_file=str(tok_path))

    def longest(sample: dict) -> int:  # tokens of the longest context + choice
        return max(
            len(hf_tok(c).input_ids) + len(hf_tok(x).input_ids) for c, x in sample["arguments"]
        )

    mismatched, max_diff, worst, cut = [], 0.0, None, 0
    for s, r in zip(samples, items):
        if (s["acc"], s["acc_norm"]) != (r.acc, r.acc_norm):
            mismatched.append(r.id)
        if longest(s) > CTX:  # truncated: lm-eval's API backend keeps one token less
            cut += 1
            continue
        ref_ll = [float(resp[0]) for resp in s["filtered_resps"]]
        diff = max(abs(a - b) for a, b in zip(ref_ll, r.loglikelihoods))
        if diff > max_diff:
            max_diff, worst = diff, (r.id, ref_ll, r.loglikelihoods)
    assert not mismatched, f"{len(mismatched)} questions disagree, e.g. {mismatched[:5]}"
    assert max_diff < 1e-3, (max_diff, worst)
    assert cut < LIMIT // 10, f"{cut} of {LIMIT} questions needed truncating"
    res = out["results"][task]
    assert res["acc,none"] == pytest.approx(ours["arc-easy"].acc, abs=1e-12)
    assert res["acc_norm,none"] == pytest.approx(ours["arc-easy"].acc_norm, abs=1e-12)
    print(
        f"server: lm-eval acc {res['acc,none']:.4f} acc_norm {res['acc_norm,none']:.4f}; "
        f"lumenlm eval {ours['arc-easy'].acc:.4f}/{ours['arc-easy'].acc_norm:.4f}; "
        f"max |dll| {max_diff:.2e} ({cut} truncated questions not compared)"
    )
