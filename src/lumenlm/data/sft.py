"""Supervised fine-tuning data: JSONL conversations, validated line by line, and their split.

Two line formats, told apart by their keys:

- chat, OpenAI's `messages` form: `{"messages": [{"role": "system"|"user"|"assistant",
  "content": str}, ...]}`, any number of turns;
- instruction, Alpaca style: `{"instruction": str, "input": str (optional), "output": str}`,
  which becomes one user turn (instruction, a blank line, input) and one assistant turn
  (output), so the loss rule "assistant tokens only" trains on `output` only.

Every line is checked before anything trains: a bad line is a `DataError` naming
`file:line` and what is wrong, and the whole file is refused (fine-tuning on silently
skipped data is worse than not starting). A conversation with no assistant turn has
nothing to learn from; it is skipped and counted, not an error.

`--data` is one file, split off by a hash of each line's conversation exactly as
`prepare` splits documents (`lumenlm.data.split.assign_split`: the same line lands in
the same split on every machine and in any order), or a folder holding `train.jsonl`
and a validation file (`val.jsonl`, `valid.jsonl` or `validation.jsonl`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from lumenlm.data.chat_template import ROLES
from lumenlm.data.download import sha256_file
from lumenlm.data.split import assign_split, check_ratios
from lumenlm.errors import DataError

VAL_NAMES = ("val.jsonl", "valid.jsonl", "validation.jsonl")
"""Validation file names looked for in a `--data` folder, in this order."""

Message = dict[str, str]


@dataclass
class Conversation:
    """One example: its messages and where it came from (`file:line`)."""

    messages: list[Message]
    source: str
    kind: str  # "chat" or "instruction"


@dataclass
class SFTSource:
    """What was read: the conversations of each split, and what the card reports."""

    train: list[Conversation]
    val: list[Conversation]
    files: dict[str, str] = field(default_factory=dict)
    """File path -> sha256 (the card and resume check them)."""
    skipped_no_assistant: int = 0
    kinds: dict[str, int] = field(default_factory=dict)


def _instruction_messages(doc: dict[str, object], where: str) -> list[Message]:
    for key in ("instruction", "output"):
        if not isinstance(doc.get(key), str):
            raise DataError(f'{where}: "{key}" must be a string; fix or remove this line')
    extra = doc.get("input", "")
    if not isinstance(extra, str):
        raise DataError(f'{where}: "input" must be a string; fix or remove this line')
    unknown = set(doc) - {"instruction", "input", "output"}
    if unknown:
        raise DataError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))} in an instruction line "
            "(instruction, input, output); fix or remove this line"
        )
    prompt = str(doc["instruction"]) + (f"\n\n{extra}" if extra.strip() else "")
    if not prompt.strip():
        raise DataError(f'{where}: "instruction" is empty; fix or remove this line')
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": doc["output"]}]  # type: ignore[dict-item]


def _chat_messages(doc: dict[str, object], where: str) -> list[Message]:
    messages = doc["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataError(f'{where}: "messages" must be a non-empty list; fix or remove this line')
    out = []
    for j, m in enumerate(messages, 1):
        if not isinstance(m, dict):
            raise DataError(
                f"{where}: message {j} is not an object with role and content; fix or remove "
                "this line"
            )
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise DataError(
                f"{where}: message {j} has role {role!r}; use system, user or assistant"
            )
        if not isinstance(content, str):
            raise DataError(
                f'{where}: message {j} ("{role}") has no string "content"; fix or remove this line'
            )
        out.append({"role": str(role), "content": content})
    return out


def parse_line(line: str, where: str) -> tuple[list[Message], str]:
    """(messages, kind) of one JSONL line; a one-line DataError naming `where` if bad."""
    try:
        doc = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{where}: not valid JSON ({exc.msg}, column {exc.colno}); fix or remove this line"
        ) from None
    if not isinstance(doc, dict):
        raise DataError(
            f"{where}: a line must be a JSON object, got {type(doc).__name__}; fix or remove it"
        )
    if "messages" in doc:
        return _chat_messages(doc, where), "chat"
    if "instruction" in doc or "output" in doc:
        return _instruction_messages(doc, where), "instruction"
    raise DataError(
        f'{where}: neither a chat line ("messages") nor an instruction line '
        '("instruction", "output"); see docs/FINETUNE.md for the formats'
    )


def read_jsonl(path: Path) -> tuple[list[Conversation], int]:
    """The conversations of one JSONL file and how many were skipped for having no
    assistant turn. Blank lines are ignored; an empty file is refused."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; give a .jsonl file or a folder") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    out: list[Conversation] = []
    skipped = 0
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        messages, kind = parse_line(line, where)
        if not any(m["role"] == "assistant" for m in messages):
            skipped += 1
            continue
        out.append(Conversation(messages, where, kind))
    if not out and not skipped:
        raise DataError(f"{path}: empty file (no JSON lines); give at least one conversation")
    return out, skipped


def _key(c: Conversation) -> str:
    """The text a conversation is split by: its messages, canonically (not its line)."""
    return json.dumps(c.messages, sort_keys=True, ensure_ascii=False)


def load_source(data: str | Path, val_ratio: float = 0.05, seed: int = 0) -> SFTSource:
    """Read `--data` (a file split by hash, or a folder with train and validation files)."""
    check_ratios(val_ratio, 0.0)
    root = Path(data)
    if root.is_dir():
        train_path = root / "train.jsonl"
        val_path = next((root / n for n in VAL_NAMES if (root / n).is_file()), None)
        if not train_path.is_file() or val_path is None:
            raise DataError(
                f"{root}: a --data folder needs train.jsonl and one of {', '.join(VAL_NAMES)}; "
                "or give one .jsonl file (split off by hash)"
            )
        train, s1 = read_jsonl(train_path)
        val, s2 = read_jsonl(val_path)
        files = {str(train_path.resolve()): sha256_file(train_path)}
        files[str(val_path.resolve())] = sha256_file(val_path)
        skipped = s1 + s2
    else:
        every, skipped = read_jsonl(root)
        files = {str(root.resolve()): sha256_file(root)}
        train, val = [], []
        for c in every:
            (val if assign_split(_key(c), val_ratio, 0.0, seed) == "val" else train).append(c)
        if every and (not val or not train):  # a tiny file: one side got nothing
            if len(every) < 2:
                raise DataError(
                    f"{root}: one conversation cannot be split into train and validation; "
                    "add more lines or give a folder with train.jsonl and val.jsonl"
                )
            if not val:
                val = [train.pop()]
            else:
                train = [val.pop(0)]
    if not train:
        raise DataError(
            f"{data}: no conversation with an assistant turn to train on "
            f"({skipped} skipped without one); add assistant replies"
        )
    if not val:
        raise DataError(f"{data}: the validation split has no conversation with an assistant turn")
    kinds: dict[str, int] = {}
    for c in train + val:
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
    return SFTSource(train, val, files, skipped, kinds)
