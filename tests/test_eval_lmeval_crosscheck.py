"""Cross-check against the reference: EleutherAI lm-evaluation-harness (PyPI `lm-eval`).

A small model is trained for a few hundred steps on ARC-Easy-Train, exported to the
Hugging Face layout (`lumenlm.export.hf`), and scored by `lm_eval` (model "hf") on the
local ARC-Easy test file through a task config that copies the official `arc_easy.yaml`
prompt fields and only swaps the dataset for the local JSONL. Every question's choice,
and therefore acc and acc_norm, must be equal; log-likelihoods agree to 1e-3.

Run with: pytest -m slow tests/test_eval_lmeval_crosscheck.py  (needs `pip install lm-eval`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lmeval_helpers import local_arc_task, offline_hf, train_model, train_tokenizer
from lumenlm.evaluate import evaluate_tasks
from lumenlm.evaluate.multiple_choice import tokenizer_encoder

pytestmark = pytest.mark.slow

LIMIT = int(os.environ.get("LUMENLM_CROSSCHECK_LIMIT", "2376"))  # all of ARC-Easy test


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny"])
def test_arc_easy_matches_lm_eval(
    preset: str, tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lm_eval = pytest.importorskip("lm_eval", reason="pip install lm-eval for the cross-check")
    from lm_eval.tasks import TaskManager

    from lumenlm.export.hf import export_hf

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
    # 128, not 64: lm-eval refuses a continuation longer than the context (one ARC-Easy
    # answer is 65 tokens with this tokenizer); 172 questions still need left truncation.
    model = train_model(preset, tok.encode(train_text).ids, context_length=128)
    hf_dir = export_hf(model, tmp_path / "hf", tokenizer_path=tok_path)

    # ours
    ours = evaluate_tasks(model, ["arc-easy"], tok, shared_data, limit=LIMIT, progress=False)
    ours_items = ours["arc-easy"].items

    # reference
    task_name = local_arc_task(tmp_path / "tasks", arc_dir / "ARC-Easy-Test.jsonl")
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={hf_dir},dtype=float32",
        tasks=[task_name],
        task_manager=TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False),
        batch_size=32,
        device="cpu",
        limit=LIMIT,
        log_samples=True,
    )
    samples = sorted(out["samples"][task_name], key=lambda s: s["doc_id"])
    assert len(samples) == len(ours_items) == LIMIT
    # lm-eval tokenizes with the exported AutoTokenizer: the same ids as ours
    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(str(hf_dir))
    enc = tokenizer_encoder(tok)
    for text in ("Question: Which gas?\nAnswer:", "Question: Which gas?\nAnswer: oxygen"):
        assert hf_tok(text)["input_ids"] == enc(text)  # default call: no BOS is added either
    mismatched, max_diff = [], 0.0
    for s, r in zip(samples, ours_items):
        ref_ll = [float(resp[0]) for resp in s["filtered_resps"]]
        max_diff = max(max_diff, max(abs(a - b) for a, b in zip(ref_ll, r.loglikelihoods)))
        if (s["acc"], s["acc_norm"]) != (r.acc, r.acc_norm):
            mismatched.append(r.id)
    assert not mismatched, f"{len(mismatched)} questions disagree, e.g. {mismatched[:5]}"
    assert max_diff < 1e-3, max_diff
    res = out["results"][task_name]
    assert res["acc,none"] == pytest.approx(ours["arc-easy"].acc, abs=1e-12)
    assert res["acc_norm,none"] == pytest.approx(ours["arc-easy"].acc_norm, abs=1e-12)
    assert res["acc_stderr,none"] == pytest.approx(ours["arc-easy"].acc_stderr, rel=1e-9)
    print(
        f"{preset}: lm-eval acc {res['acc,none']:.4f} acc_norm {res['acc_norm,none']:.4f}; "
        f"lumenlm {ours['arc-easy'].correct}/{ours['arc-easy'].total}, max |dll| {max_diff:.2e}"
    )
