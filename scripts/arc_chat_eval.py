"""ARC accuracy in the chat form, as nanochat's chat eval scores multiple choice.

Each test question is rendered as the fine-tuning chats are (`lumenlm.data.sft_arc`: the
question, lettered choices, "Answer:") with the model's own chat template and its
generation prompt; the model's next-token logits are restricted to the first token of
each choice's reply ("A", "B", ...), and the largest one is its answer. Chance is 1 over
the number of choices (about 25%).

    .venv/bin/python scripts/arc_chat_eval.py RUN --task arc-easy [--limit N]

Prints one JSON line: {"task", "n", "accuracy", "chance"}. (lm-eval's scoring of the
same model is `lumenlm eval RUN --tasks arc-easy`.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from lumenlm.data.chat_template import ChatTemplate
from lumenlm.data.sft_arc import LETTERS, arc_chat
from lumenlm.evaluate.taskfiles import find_task_file
from lumenlm.modelio import load

FILES = {"arc-easy": "ARC-Easy-Test.jsonl", "arc-challenge": "ARC-Challenge-Test.jsonl"}


def letter_ids(tok: object, prefix: str, n: int) -> list[int]:
    """The first reply token of "A. ...", "B. ..." after the rendered prompt `prefix`."""
    base = len(tok.encode(prefix).ids)  # type: ignore[attr-defined]
    out = []
    for letter in LETTERS[:n]:
        ids = tok.encode(prefix + f"{letter}. x").ids  # type: ignore[attr-defined]
        out.append(ids[base])
    return out


@torch.no_grad()
def score(model_path: str, task: str, limit: int | None) -> dict[str, object]:
    model = load(model_path)
    tok = model.tokenizer
    if tok is None:
        raise SystemExit(f"{model_path}: no tokenizer.json")
    template = ChatTemplate.from_meta(model.meta)
    path = find_task_file(task)
    if path is None:
        raise SystemExit(f"no {FILES[task]} found; set LUMENLM_DATA")
    lines = [x for x in Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]
    lines = lines[:limit] if limit else lines
    right, chance = 0, 0.0
    T = model.config.context_length
    for n, line in enumerate(lines, 1):
        chat = arc_chat(line, f"{path}:{n}")
        user, answer = chat["messages"]  # type: ignore[misc]
        prompt = template.render([user])
        k = len(json.loads(line)["question"]["choices"])
        ids = tok.encode(prompt).ids[-T:]
        logits = model(torch.tensor([ids]), last_only=True).logits[0, -1]
        cand = letter_ids(tok, prompt, k)
        pick = max(range(k), key=lambda i: float(logits[cand[i]]))
        right += LETTERS[pick] == answer["content"][0]
        chance += 1 / k
    return {
        "task": task,
        "n": len(lines),
        "accuracy": right / len(lines),
        "chance": chance / len(lines),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="model or run directory")
    p.add_argument("--task", choices=sorted(FILES), default="arc-easy")
    p.add_argument("--limit", type=int, help="score only the first N questions")
    args = p.parse_args(argv)
    print(json.dumps(score(args.model, args.task, args.limit)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
