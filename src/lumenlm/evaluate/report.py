"""Reports: the JSON document, per-example JSONL, and a plain-text table.

JSON keys are plain: ``lm`` holds ``loss``, ``perplexity``, ``bits_per_byte``, ``top1``,
``top5``, ``top10`` with ``window``/``stride``/``tokens``; ``tasks.<name>`` holds ``acc``,
``acc_norm``, ``correct``, ``total``, ``stderr`` (of acc; ``acc_norm_stderr`` too) for a
multiple-choice task, and ``word_perplexity``, ``byte_perplexity``, ``bits_per_byte``,
``token_perplexity`` with their counts for a perplexity task (``wikitext``); ``harness``
holds lm-evaluation-harness's own ``results`` (``--harness``), metric names as it
spells them (``acc,none``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lumenlm.evaluate.lm import LMResult
from lumenlm.evaluate.multiple_choice import TaskResult
from lumenlm.evaluate.wikitext import PerplexityResult
from lumenlm.modelio import atomic_write_text

AnyTaskResult = TaskResult | PerplexityResult


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def task_summary(result: AnyTaskResult) -> dict[str, Any]:
    """The JSON of one task's result (either kind)."""
    if isinstance(result, PerplexityResult):
        d = result.to_dict()
        d["file"] = d.pop("source")
        d.pop("task")
        return d
    return {
        "acc": result.acc,
        "acc_norm": result.acc_norm,
        "correct": result.correct,
        "correct_norm": result.correct_norm,
        "total": result.total,
        "stderr": _finite(result.acc_stderr),
        "acc_norm_stderr": _finite(result.acc_norm_stderr),
        "file": result.source,
        "truncated": result.truncated,
        "overlong": result.overlong,
    }


def build_report(
    lm: LMResult | None = None,
    tasks: dict[str, AnyTaskResult] | None = None,
    info: dict[str, Any] | None = None,
    harness: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON-able report: ``{"model": ..., "lm": {...}, "tasks": {name: {...}},
    "harness": {...}}`` (each part only when evaluated)."""
    doc: dict[str, Any] = dict(info or {})
    if lm is not None:
        d = lm.to_dict()
        doc["lm"] = {
            k: d[k]
            for k in (
                "loss",
                "perplexity",
                "bits_per_byte",
                "top1",
                "top5",
                "top10",
                "tokens",
                "window",
                "stride",
                "windows",
                "bytes",
                "bytes_per_token",
                "split",
                "convention",
            )
        }
    if tasks:
        doc["tasks"] = {name: task_summary(r) for name, r in tasks.items()}
    if harness is not None:
        doc["harness"] = harness
    return doc


def write_json(doc: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
    return path


def write_examples(tasks: dict[str, AnyTaskResult], path: str | Path) -> Path:
    """One JSON line per question (task, id, gold, pred, pred_norm, loglikelihoods, ...)
    or per perplexity document (task, doc, loglikelihood, words, bytes, tokens)."""
    lines = []
    for name, res in tasks.items():
        if isinstance(res, PerplexityResult):
            lines += [json.dumps({"task": name, **d}) for d in res.per_document]
            continue
        for r in res.items:
            lines.append(
                json.dumps(
                    {
                        "task": name,
                        "id": r.id,
                        "gold": r.gold,
                        "pred": r.pred,
                        "pred_norm": r.pred_norm,
                        "acc": r.acc,
                        "acc_norm": r.acc_norm,
                        "loglikelihoods": r.loglikelihoods,
                        "is_greedy": r.is_greedy,
                        "choice_chars": r.choice_chars,
                    }
                )
            )
    path = Path(path)
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return path


def format_table(lm: LMResult | None = None, tasks: dict[str, AnyTaskResult] | None = None) -> str:
    """Readable summary for the terminal."""
    out: list[str] = []
    if lm is not None:
        out.append(
            f"split {lm.split or '?'}: {lm.tokens:,} tokens scored, window {lm.window}, "
            f"stride {lm.stride} ({lm.windows:,} windows)"
        )
        bpb = (
            f"{lm.bits_per_byte:.4f}" if lm.bits_per_byte is not None else "n/a (no bytes in meta)"
        )
        rows = [
            ("loss (nats/token)", f"{lm.loss:.4f}"),
            ("perplexity", f"{lm.perplexity:.4f}"),
            ("bits per byte", bpb),
            ("top-1 accuracy", f"{lm.top1:.2%}"),
            ("top-5 accuracy", f"{lm.top5:.2%}"),
            ("top-10 accuracy", f"{lm.top10:.2%}"),
        ]
        width = max(len(k) for k, _ in rows)
        out += [f"  {k.ljust(width)}  {v}" for k, v in rows]
    ppl = {n: r for n, r in (tasks or {}).items() if isinstance(r, PerplexityResult)}
    mc = {n: r for n, r in (tasks or {}).items() if isinstance(r, TaskResult)}
    for name, r in ppl.items():
        if out:
            out.append("")
        out += _perplexity_lines(name, r)
    if mc:
        tasks = mc
        if out:
            out.append("")
        head = ("task", "acc", "± stderr", "acc_norm", "correct/total")
        rows2 = [
            (
                n,
                f"{r.acc:.2%}",
                f"{r.acc_stderr:.2%}" if math.isfinite(r.acc_stderr) else "n/a",
                f"{r.acc_norm:.2%}",
                f"{r.correct:,}/{r.total:,}",
            )
            for n, r in tasks.items()
        ]
        widths = [max(len(h), *(len(row[i]) for row in rows2)) for i, h in enumerate(head)]
        out.append(
            "  ".join(
                h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths))
            )
        )
        for row in rows2:
            out.append(
                "  ".join(
                    c.ljust(w) if i == 0 else c.rjust(w)
                    for i, (c, w) in enumerate(zip(row, widths))
                )
            )
        for name, r in tasks.items():
            if r.truncated:
                out.append(
                    f"note: {name}: {r.truncated} of {r.total} questions were cut from the "
                    "left to fit the context window (as lm-eval does)"
                )
            if r.overlong:
                out.append(
                    f"note: {name}: {r.overlong} questions have a choice longer than the "
                    "window, scored on its last tokens (lm-eval refuses these)"
                )
            if name == "hellaswag" and r.source.endswith(".txt"):
                out.append(
                    f"note: hellaswag read from the pre-joined text layout ({r.source}); "
                    "lm-eval capitalizes ctx_b, which that file cannot, so scores may "
                    "differ slightly from runs on hellaswag_val.jsonl"
                )
    return "\n".join(out)


def _perplexity_lines(name: str, r: PerplexityResult) -> list[str]:
    """A perplexity task's block: what was scored, then the four numbers."""
    official = {True: "official file", False: "NOT the official file", None: "file unchecked"}
    out = [
        f"{name} ({r.split}, {official[r.official_file]}): {r.documents} documents, "
        f"{r.words:,} words, {r.bytes:,} bytes, {r.tokens:,} tokens, window {r.window}"
    ]
    rows = [
        ("word perplexity", f"{r.word_perplexity:.4f}"),
        ("byte perplexity", f"{r.byte_perplexity:.4f}"),
        ("bits per byte", f"{r.bits_per_byte:.4f}"),
        ("token perplexity", f"{r.token_perplexity:.4f}"),
    ]
    width = max(len(k) for k, _ in rows)
    return out + [f"  {k.ljust(width)}  {v}" for k, v in rows]
