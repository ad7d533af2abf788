"""The ARC worked example end to end (slow): ARC train chats -> `lumenlm finetune` with the
"turns" template -> `lumenlm chat` answers "<letter>. <text>" and stops at <|end|>, and
the held-out (dev) assistant-token loss is lower than before fine-tuning."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

from lumenlm.cli import main
from lumenlm.config import ModelConfig
from lumenlm.data.chat_template import ChatTemplate
from lumenlm.data.sft_arc import convert_arc
from lumenlm.data.tokenizer import save_tokenizer, train_tokenizer
from lumenlm.infer.generate import stream_generate
from lumenlm.infer.sampling import SamplingParams
from lumenlm.model import GPT
from lumenlm.modelio import load, save_model
from train_helpers import LUMENLM

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def arc_chats(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from data_helpers import require_shared

    full = tmp_path_factory.mktemp("arc_full")
    convert_arc(require_shared("arc"), full)
    out = tmp_path_factory.mktemp("arc")
    for name, n in (("train.jsonl", 600), ("val.jsonl", 100)):
        lines = (full / name).read_text().splitlines()
        (out / name).write_text("\n".join(lines[:n]) + "\n")
    return out


@pytest.fixture(scope="module")
def base(arc_chats: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained small model with a tokenizer of ARC text (the pipeline is the point)."""
    root = tmp_path_factory.mktemp("base")
    texts = [
        m["content"]
        for line in (arc_chats / "train.jsonl").read_text().splitlines()
        for m in json.loads(line)["messages"]
    ]
    tok = train_tokenizer(texts, vocab_size=1500)
    tok_path = save_tokenizer(tok, root / "tokenizer.json")
    cfg = ModelConfig(
        vocab_size=tok.get_vocab_size(), d_model=64, n_layers=2, n_heads=4, d_ff=128,
        context_length=256,
    )  # fmt: skip
    torch.manual_seed(0)
    return save_model(GPT(cfg), root / "model", tokenizer_path=tok_path)


def test_arc_finetune_then_chat(
    base: Path, arc_chats: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["finetune", str(base), "--data", str(arc_chats), "--out", str(tmp_path),
            "--template", "turns", "--device", "cpu", "--no-progress",
            "--set", "max_steps=120", "--set", "lr=3e-3", "--set", "eval_interval=60",
            "--set", "batch_size=8"]  # fmt: skip
    assert main(argv) == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])
    record = json.loads((run / "config.json").read_text())
    before = record["finetune"]["base_val_loss"]
    evals = [
        json.loads(x)["val_loss"]
        for x in (run / "metrics.jsonl").read_text().splitlines()
        if "val_loss" in x
    ]
    assert evals[-1] < before - 1.0  # the held-out assistant loss fell

    question = json.loads((arc_chats / "val.jsonl").read_text().splitlines()[0])
    user = question["messages"][0]["content"].replace("\n", " ")
    # `lumenlm chat` on the run, no flag: the template comes from the checkpoint
    out = subprocess.run(
        [*LUMENLM, "chat", str(run), "--greedy", "--max-new-tokens", "40"],
        input=user + "\n", capture_output=True, text=True, timeout=300, check=True,
    ).stdout  # fmt: skip
    reply = out.split("Assistant: ", 1)[1].strip()
    # the answer format's letter (an untrained 100k-parameter base learns "B." and the
    # end of turn first; the answer text after it takes a real pretrained model)
    assert re.match(r"^[A-E]\.", reply), out
    assert "<|" not in reply and "User:" not in reply

    # ... and generation ended on the end-of-turn token, not the length limit
    model = load(run)
    tpl = ChatTemplate.from_meta(model.meta)
    stop_ids = tuple(tpl.stop_token_ids(model.tokenizer))  # what chat stops on
    assert stop_ids == (model.tokenizer.token_to_id("<|end|>"),)
    prompt = tpl.render([{"role": "user", "content": user}])
    params = SamplingParams(
        max_new_tokens=40, temperature=0.0, stop_token_ids=stop_ids, ignore_eos=True
    )  # only <|end|> can stop it
    events = list(stream_generate(model, prompt, params, tokenizer=model.tokenizer))
    generated = [i for e in events for i in e.token_ids]
    assert events[-1].finish_reason == "stop" and len(generated) < 40
    ids = model.tokenizer.encode(prompt).ids + generated
    with torch.no_grad():
        nxt = model(torch.tensor([ids]), last_only=True).logits[0, -1].argmax()
    assert int(nxt) == stop_ids[0]  # the greedy token it stopped on is <|end|>
