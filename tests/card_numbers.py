"""Tracing a model card's numbers to the files of its run (no tests here).

A card may print only numbers that some file of the run holds (config.json,
metrics.jsonl, trainer_state.json, meta.json, an eval JSON, a reproduction's own files):
`untraced(card, docs)` lists every number written outside code, paths and hashes that
no value of `docs` rounds to, as written (its decimals, a percentage as 100x).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

NUMBER = re.compile(r"(?<![\w.\-/])(\d[\d,]*(?:\.\d+)?)(%?)(?![\w.]*\w)")


def numbers(value: Any) -> list[float]:
    """Every numeric value inside a JSON document (booleans are not numbers)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in numbers(v)]
    return []


def text_numbers(text: str) -> list[float]:
    """The numbers written in a file's sentence (a note of `lumenlm prepare`)."""
    return [v for _, v, _, _ in card_numbers(text)]


def card_numbers(text: str) -> list[tuple[str, float, int, bool]]:
    """(as written, value, decimals, percent) of each number outside code and links."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`]*`", "", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)  # image links
    out = []
    for m in NUMBER.finditer(text):
        raw = m.group(1).rstrip(",")
        dec = len(raw.split(".")[1]) if "." in raw else 0
        out.append((m.group(0), float(raw.replace(",", "")), dec, bool(m.group(2))))
    return out


def traced(value: float, dec: int, percent: bool, sources: list[float]) -> bool:
    """Whether some source, written with `dec` decimals (x100 for a percentage), is `value`."""
    for s in sources:
        v = 100 * s if percent else s
        if math.isfinite(v) and math.isclose(round(v, dec), value, abs_tol=10**-dec / 2 + 1e-12):
            return True
    return False


def run_documents(run: Path, *extra: Path) -> list[Any]:
    """The JSON documents of a run that a card may quote: config.json, metrics.jsonl, the
    last and best checkpoints' trainer states, the data's meta.json (with the numbers in its notes), and `extra`."""
    config = json.loads((run / "config.json").read_text())
    docs: list[Any] = [config]
    docs += [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    states = [run / "checkpoints" / name / "trainer_state.json" for name in ("last", "best")]
    paths = [*states, *extra]
    if config.get("data_dir"):
        paths.append(Path(config["data_dir"]) / "meta.json")
    for path in paths:
        if path.is_file():
            doc = json.loads(path.read_text())
            docs.append(doc)
            src = doc.get("source") if isinstance(doc, dict) else None
            if isinstance(src, dict):  # meta.json: its notes are read into the card verbatim
                notes = " ".join([*(src.get("notes") or []), str(src.get("split_rule", ""))])
                docs.append(text_numbers(notes))
    return docs


def untraced(card: str, docs: list[Any]) -> tuple[list[str], int]:
    """(the numbers of `card` that no value of `docs` accounts for, how many it has)."""
    sources = [x for d in docs for x in numbers(d)]
    found = card_numbers(card)
    return [w for w, v, d, p in found if not traced(v, d, p, sources)], len(found)
