"""The worked fine-tuning example's data: ARC questions as question/answer chats.

ARC-Easy and ARC-Challenge *train* questions become chat lines for `lumenlm finetune`
(`train.jsonl`); their *dev* questions are held out as `val.jsonl`; the *test* files,
which `lumenlm eval --tasks arc-easy` scores, are never read. Each chat is

    user:      Question: {stem}\\nA. {choice}\\nB. {choice}\\n...\\nAnswer:
    assistant: {letter}. {answer text}

so the reply starts with the letter (the chat-form score reads the letter logits at the
reply's first position, as nanochat's chat eval does) and then the answer text (what
lm-eval's `arc_easy` scores). Questions labelled 1..4 instead of A..D get letters, so
every reply starts with one of A-E. Input is the official ARC JSONL layout (one
question per line: `question.stem`, `question.choices[].label/text`, `answerKey`).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from lumenlm.errors import DataError

LETTERS = "ABCDEFGH"
SPLITS = {"train": "Train", "val": "Dev"}
"""Output file stem -> the ARC split it is made from."""
SETS = ("ARC-Easy", "ARC-Challenge")


def arc_chat(line: str, where: str) -> dict[str, object]:
    """One ARC JSONL line -> {"messages": [user, assistant]} (DataError naming `where`)."""
    try:
        doc = json.loads(line)
        stem = str(doc["question"]["stem"])
        choices = [(str(c["label"]), str(c["text"])) for c in doc["question"]["choices"]]
        key = str(doc["answerKey"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(
            f"{where}: not an ARC question line ({type(exc).__name__}: {exc})"
        ) from None
    labels = [label for label, _ in choices]
    if key not in labels or len(choices) > len(LETTERS):
        raise DataError(f"{where}: answerKey {key!r} is not one of the labels {labels}")
    lines = [f"Question: {stem}"]
    lines += [f"{LETTERS[i]}. {text}" for i, (_, text) in enumerate(choices)]
    lines.append("Answer:")
    i = labels.index(key)
    return {
        "messages": [
            {"role": "user", "content": "\n".join(lines)},
            {"role": "assistant", "content": f"{LETTERS[i]}. {choices[i][1]}"},
        ]
    }


def convert_arc(arc_dir: str | Path, out_dir: str | Path) -> dict[str, int]:
    """Write `out_dir/train.jsonl` (Easy + Challenge train) and `out_dir/val.jsonl` (their
    dev splits) from the ARC files in `arc_dir`; returns the number of chats per file."""
    src, out = Path(arc_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for stem, split in SPLITS.items():
        rows: list[str] = []
        for name in SETS:
            path = src / f"{name}-{split}.jsonl"
            if not path.is_file():
                raise DataError(
                    f"{path}: not found; point at the folder with the ARC files "
                    "(e.g. $LUMENLM_DATA/arc)"
                )
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    chat = arc_chat(line, f"{path}:{n}")
                    rows.append(json.dumps(chat, ensure_ascii=False))
        _write_atomic(out / f"{stem}.jsonl", "\n".join(rows) + "\n")
        counts[f"{stem}.jsonl"] = len(rows)
    return counts


def _write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and rename: a crash never leaves half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
