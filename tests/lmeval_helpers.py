"""Shared helpers (no tests) for the checks against lm-evaluation-harness: local task
files built from the installed official task configs (only the dataset swapped for a
local file), and small BPE tokenizers and briefly trained tiny models to score."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lumenlm.model import GPT
from lumenlm.presets import get_preset

ARC_UTILS_PY = '''
def process_docs(dataset):
    """Official ARC JSONL rows -> the allenai/ai2_arc row layout arc_easy.yaml expects."""
    def convert(doc):
        q = doc["question"]
        return {"id": doc["id"], "question": q["stem"], "answerKey": doc["answerKey"],
                "choices": {"text": [c["text"] for c in q["choices"]],
                            "label": [c["label"] for c in q["choices"]]}}
    return dataset.map(convert, remove_columns=list(dataset.features))
'''


def lm_eval_tasks_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks"


def offline_hf(monkeypatch, tmp_path: Path) -> None:
    """No hub access, and a private datasets cache, for lm-eval's dataset loading."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))


def local_arc_task(task_dir: Path, arc_file: Path, name: str = "lumenlm_arc_easy_local") -> str:
    """An lm-eval task = the installed official arc_easy.yaml with a local dataset."""
    official = lm_eval_tasks_dir() / "arc" / "arc_easy.yaml"
    cfg = yaml.safe_load(official.read_text())
    assert cfg["doc_to_text"] == "Question: {{question}}\nAnswer:"  # what lumenlm uses
    cfg.pop("tag", None)
    cfg.update(
        task=name,
        dataset_path="json",
        dataset_name=None,
        dataset_kwargs={"data_files": {"test": str(arc_file)}},
        test_split="test",
    )
    for key in ("training_split", "validation_split"):
        cfg.pop(key, None)
    text = yaml.safe_dump(cfg, sort_keys=False) + "process_docs: !function utils.process_docs\n"
    task_dir.mkdir(parents=True, exist_ok=True)
    (task_dir / f"{name}.yaml").write_text(text)
    (task_dir / "utils.py").write_text(ARC_UTILS_PY)
    return name


def local_wikitext_task(
    task_dir: Path, pages: list[str], name: str = "lumenlm_wikitext_local"
) -> str:
    """An lm-eval task = the installed official wikitext.yaml (and its preprocess module,
    copied verbatim) with EleutherAI/wikitext_document_level swapped for a local JSONL of
    the same pages (one ``{"page": ...}`` per line)."""
    official = lm_eval_tasks_dir() / "wikitext"
    text = (official / "wikitext.yaml").read_text()
    data = task_dir / f"{name}.jsonl"
    task_dir.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps({"page": p}) + "\n" for p in pages))
    swaps = {
        "task: wikitext\n": f"task: {name}\n",
        "dataset_path: EleutherAI/wikitext_document_level\n": "dataset_path: json\n",
        "dataset_name: wikitext-2-raw-v1\n": (
            f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data))}\n"
        ),
        "training_split: train\n": "",
        "validation_split: validation\n": "",
    }
    for old, new in swaps.items():
        assert old in text, f"the official wikitext.yaml changed: no {old!r}"
        text = text.replace(old, new)
    assert "output_type: loglikelihood_rolling" in text and "test_split: test" in text
    (task_dir / f"{name}.yaml").write_text(text)
    shutil.copy(official / "preprocess_wikitext.py", task_dir / "preprocess_wikitext.py")
    return name


def train_tokenizer(text: str, path: Path, vocab_size: int = 512) -> Tokenizer:
    """A byte-level BPE tokenizer with <|endoftext|> and <|pad|>, saved at `path`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([text], trainer)
    tok.save(str(path))
    return tok


def train_model(
    preset: str, ids: list[int], steps: int = 200, context_length: int = 128, vocab: int = 512
) -> GPT:
    """A preset's architecture at `context_length`, trained `steps` AdamW steps on `ids`."""
    torch.manual_seed(0)
    cfg = get_preset(preset).model
    cfg.context_length = context_length
    cfg.vocab_size = vocab
    cfg.embd_dropout = cfg.attn_dropout = cfg.resid_dropout = 0.0
    model = GPT(cfg)
    data = torch.tensor(ids)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    T = cfg.context_length
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(data) - T - 1, (8,))
        x = torch.stack([data[s : s + T] for s in starts])
        y = torch.stack([data[s + 1 : s + T + 1] for s in starts])
        loss = model(x, y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
