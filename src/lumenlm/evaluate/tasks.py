"""Multiple-choice benchmark tasks: registry and file parsers.

Every task becomes a list of `MCItem`s (context, choices, gold index) built exactly
as EleutherAI lm-evaluation-harness builds its requests, so scores are comparable:

- ARC (``arc_easy.yaml`` / ``arc_challenge.yaml``): context ``"Question: " + stem +
  "\\nAnswer:"``, one choice per answer text, gold = index of ``answerKey`` among the
  labels (labels may be ``A..E`` or ``1..5``; 3 to 5 choices). Test split.
- HellaSwag (``hellaswag/utils.py``): context ``preprocess(activity_label + ": " +
  ctx_a + " " + ctx_b.capitalize())``, choices ``preprocess(ending)``. Validation split.

The scorer adds lm-eval's target delimiter (a single space) in front of each choice.
``PERPLEXITY_TASKS`` names the document-level perplexity tasks (``wikitext``), which
`lumenlm.evaluate.wikitext` reads and scores; `parse_task_list` accepts both kinds.
Parsers here only read a given path; which path (a local copy or a download) is
`lumenlm.evaluate.taskfiles`'s job. Every malformed line is an error naming file and line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lumenlm.errors import ConfigError, DataError


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice question: score `" " + choice` after `context`."""

    id: str
    context: str
    choices: tuple[str, ...]
    gold: int


@dataclass(frozen=True)
class TaskSpec:
    """Where a task's files live (first existing name wins) and how to read them."""

    name: str
    split: str
    subdir: str  # folder under a data root: arc/ or hellaswag/
    filenames: tuple[str, ...]  # preferred first
    loader: Callable[[Path], list[MCItem]]
    description: str


# ----------------------------------------------------------------------------- ARC


def arc_context(stem: str) -> str:
    """lm-eval's ARC prompt (`doc_to_text: "Question: {{question}}\\nAnswer:"`)."""
    return "Question: " + stem + "\nAnswer:"


def _bad(path: Path, lineno: int, why: str) -> DataError:
    return DataError(f"{path}:{lineno}: {why}")


def _json_lines(path: Path):
    """Yield (line number, object) for each non-blank line; malformed lines raise."""
    try:
        fh = path.open(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with fh:
        try:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise _bad(path, lineno, f"not valid JSON ({exc.msg})") from None
                if not isinstance(obj, dict):
                    raise _bad(path, lineno, "expected a JSON object")
                yield lineno, obj
        except UnicodeDecodeError:
            raise DataError(f"{path}: not UTF-8 text") from None


def load_arc(path: str | Path) -> list[MCItem]:
    """Read an official ARC JSONL file (`ARC-Easy-Test.jsonl`, ...).

    Fields: ``id``, ``question.stem``, ``question.choices[{text, label}]``, ``answerKey``.
    Also accepts the Hugging Face `allenai/ai2_arc` row layout (``question`` a string,
    ``choices: {text: [...], label: [...]}``). Choice order is kept as in the file.
    """
    path = Path(path)
    items: list[MCItem] = []
    for lineno, obj in _json_lines(path):
        try:
            q = obj["question"]
            if isinstance(q, dict):
                stem = q["stem"]
                texts = [c["text"] for c in q["choices"]]
                labels = [str(c["label"]) for c in q["choices"]]
            else:
                stem = q
                texts = list(obj["choices"]["text"])
                labels = [str(x) for x in obj["choices"]["label"]]
            key = str(obj["answerKey"])
        except (KeyError, TypeError) as exc:
            raise _bad(path, lineno, f"not an ARC question (missing field {exc})") from None
        if not isinstance(stem, str) or not all(isinstance(t, str) for t in texts):
            raise _bad(path, lineno, "question stem and choice texts must be strings")
        if len(texts) < 2:
            raise _bad(path, lineno, f"needs at least 2 choices, has {len(texts)}")
        if key not in labels:
            raise _bad(path, lineno, f"answerKey {key!r} is not one of the labels {labels}")
        items.append(
            MCItem(str(obj.get("id", lineno)), arc_context(stem), tuple(texts), labels.index(key))
        )
    return _nonempty(items, path)


# ----------------------------------------------------------------------------- HellaSwag


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's `hellaswag/utils.py::preprocess`, verbatim.

    Strip; " [title]" -> ". "; drop every bracketed span (WikiHow artifacts, non-greedy);
    one pass of double space -> single space.
    """
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def hellaswag_query(activity_label: str, ctx_a: str, ctx_b: str) -> str:
    """The HellaSwag context exactly as lm-eval's `process_docs` builds it."""
    return hellaswag_preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())


def load_hellaswag_jsonl(path: str | Path) -> list[MCItem]:
    """Read the official `hellaswag_val.jsonl` (fields activity_label, ctx_a, ctx_b,
    endings, label; ``ind`` is used as id). The HF `Rowan/hellaswag` rows work too."""
    path = Path(path)
    items: list[MCItem] = []
    for lineno, obj in _json_lines(path):
        try:
            endings = obj["endings"]
            if not isinstance(endings, list) or not all(isinstance(e, str) for e in endings):
                raise TypeError("endings must be a list of strings")
            query = hellaswag_query(obj["activity_label"], obj["ctx_a"], obj["ctx_b"])
            gold = int(obj["label"])
            choices = tuple(hellaswag_preprocess(e) for e in endings)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise _bad(
                path, lineno, f"not a HellaSwag item ({type(exc).__name__}: {exc})"
            ) from None
        if not 0 <= gold < len(choices):
            raise _bad(path, lineno, f"label {gold} out of range for {len(choices)} endings")
        items.append(MCItem(str(obj.get("ind", lineno)), query, choices, gold))
    return _nonempty(items, path)


def load_hellaswag_text(path: str | Path) -> list[MCItem]:
    """Read the six-lines-per-item text layout (llama.cpp `--hellaswag`,
    `hellaswag_val_full.txt`): ``activity_label: ctx``, gold label, four endings.

    That file is already preprocessed by its extractor (close to, not exactly,
    lm-eval's `preprocess`) and has lost the ctx_a/ctx_b split, so ctx_b cannot be
    capitalized; lm-eval's `preprocess` is applied again (a no-op on most lines).
    Scores can therefore differ slightly from jsonl-based runs; prefer the jsonl.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise DataError(
            f"{path}:{len(lines)}: {len(lines)} lines is not a multiple of 6 "
            "(context, label, 4 endings per item); the last item is incomplete"
        )
    items: list[MCItem] = []
    for start in range(0, len(lines), 6):
        ctx, label, *endings = lines[start : start + 6]
        lineno = start + 2
        if not label.strip().isdigit() or int(label) > 3:
            raise _bad(path, lineno, f"expected the gold label 0-3, got {label[:40]!r}")
        if not ctx.strip():
            raise _bad(path, start + 1, "empty context line")
        items.append(
            MCItem(
                str(start // 6),
                hellaswag_preprocess(ctx),
                tuple(hellaswag_preprocess(e) for e in endings),
                int(label),
            )
        )
    return _nonempty(items, path)


def load_hellaswag(path: str | Path) -> list[MCItem]:
    """HellaSwag from either layout: ``.jsonl`` (official) or the 6-line text file."""
    path = Path(path)
    if path.suffix == ".jsonl" or path.suffix == ".json":
        return load_hellaswag_jsonl(path)
    return load_hellaswag_text(path)


def _nonempty(items: list[MCItem], path: Path) -> list[MCItem]:
    if not items:
        raise DataError(f"{path}: no items in the file")
    return items


# ----------------------------------------------------------------------------- registry

TASKS: dict[str, TaskSpec] = {
    "arc-easy": TaskSpec(
        "arc-easy",
        "test",
        "arc",
        ("ARC-Easy-Test.jsonl",),
        load_arc,
        "ARC-Easy test, 2,376 questions (lm-eval arc_easy)",
    ),
    "arc-challenge": TaskSpec(
        "arc-challenge",
        "test",
        "arc",
        ("ARC-Challenge-Test.jsonl",),
        load_arc,
        "ARC-Challenge test, 1,172 questions (lm-eval arc_challenge)",
    ),
    "hellaswag": TaskSpec(
        "hellaswag",
        "validation",
        "hellaswag",
        ("hellaswag_val.jsonl", "hellaswag_val_full.txt"),
        load_hellaswag,
        "HellaSwag validation, 10,042 items (lm-eval hellaswag)",
    ),
}


# Document-level perplexity tasks: scored by `lumenlm.evaluate.wikitext`, not multiple choice.
PERPLEXITY_TASKS: dict[str, str] = {
    "wikitext": "WikiText-2 raw test, 62 documents: word perplexity, byte perplexity and "
    "bits per byte (lm-eval wikitext)",
}
ALIASES = {"wikitext-2": "wikitext", "wikitext2": "wikitext"}


def _key(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    return ALIASES.get(key, key)


def task_names() -> list[str]:
    """Every name `--tasks` accepts: the multiple-choice tasks, then the perplexity ones."""
    return [*TASKS, *PERPLEXITY_TASKS]


def is_perplexity_task(name: str) -> bool:
    """Whether `name` is a document-level perplexity task (``wikitext``)."""
    return _key(name) in PERPLEXITY_TASKS


def get_task(name: str) -> TaskSpec:
    """The multiple-choice task called `name` (also accepts lm-eval spelling, ``arc_easy``)."""
    key = _key(name)
    if key not in TASKS:
        why = "is not multiple choice; " if key in PERPLEXITY_TASKS else ""
        raise ConfigError(f"unknown task {name!r}; {why}use one of: {', '.join(TASKS)}")
    return TASKS[key]


def parse_task_list(text: str) -> list[str]:
    """``"arc-easy,wikitext"`` -> canonical names, validated, duplicates dropped."""
    names: list[str] = []
    for part in text.split(","):
        if part.strip():
            key = _key(part)
            if key not in TASKS and key not in PERPLEXITY_TASKS:
                raise ConfigError(f"unknown task {part!r}; use one of: {', '.join(task_names())}")
            if key not in names:
                names.append(key)
    if not names:
        raise ConfigError(f"no task given; use one of: {', '.join(task_names())}")
    return names
