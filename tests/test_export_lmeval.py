"""lm-evaluation-harness runs on every Hugging Face export, Lumiere's remote code included
(slow; `pip install 'lumenlm[crosscheck]'`).

A local multiple-choice task (JSONL written here, no download) is scored by lm_eval's
"hf" model on the export of each architecture; every choice's log-likelihood equals the
one lumenlm computes from its own model to 1e-4, so lm-eval sees the same model and the
same tokens through the export.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from export_helpers import arch_model_dir
from lumenlm.data.tokenizer import encode
from lumenlm.export.hf import export_hf
from lumenlm.modelio import load

pytestmark = pytest.mark.slow

DOCS = [
    {
        "question": "Once upon a time, there was a",
        "choices": ["little girl", "cat", "tree"],
        "answer": 0,
    },
    {"question": "The dog sat on the", "choices": ["mat", "sun", "moon 🙂"], "answer": 0},
    {"question": "naïve café — the", "choices": ["house", "ball", "big red book"], "answer": 2},
    {"question": "It was a happy\nday in the", "choices": ["park", "library"], "answer": 1},
]


def _ours(model, context: str, continuation: str) -> float:
    """Sum of log-probabilities of `continuation` after `context`, tokenized as lm-eval
    does (the whole string, then the context's tokens cut off)."""
    whole = encode(model.tokenizer, context + continuation)
    n = len(encode(model.tokenizer, context))
    x = torch.tensor([whole])
    with torch.no_grad():
        logp = torch.log_softmax(model(x).logits[0, :-1].double(), dim=-1)
    return float(sum(logp[i - 1, whole[i]] for i in range(n, len(whole))))


@pytest.mark.parametrize("arch", ["gpt2", "llama", "lumiere"])
def test_lm_eval_scores_the_export_as_lumenlm_does(tmp_path, monkeypatch, arch: str) -> None:
    lm_eval = pytest.importorskip("lm_eval", reason="pip install 'lumenlm[crosscheck]'")
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    model = load(arch_model_dir(tmp_path, arch))
    hf_dir = export_hf(model, tmp_path / "hf")
    data = tmp_path / "docs.jsonl"
    data.write_text("\n".join(json.dumps(d) for d in DOCS) + "\n")
    task = {
        "task": "lumenlm_export_mc",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{question}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{answer}}",
        "metric_list": [{"metric": "acc"}],
    }
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "mc.yaml").write_text(yaml.safe_dump(task))
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={hf_dir},dtype=float32,trust_remote_code=True",
        tasks=["lumenlm_export_mc"],
        task_manager=TaskManager(include_path=str(tmp_path / "tasks")),
        batch_size=1,
        device="cpu",
        log_samples=True,
    )
    samples = sorted(out["samples"]["lumenlm_export_mc"], key=lambda s: s["doc_id"])
    assert len(samples) == len(DOCS)
    for s, doc in zip(samples, DOCS):
        theirs = [float(r[0]) for r in s["filtered_resps"]]
        ours = [_ours(model, doc["question"], " " + c) for c in doc["choices"]]
        assert theirs == pytest.approx(ours, abs=1e-4)
    assert "acc,none" in out["results"]["lumenlm_export_mc"]
