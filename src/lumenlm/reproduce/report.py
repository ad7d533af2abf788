"""The comparison table and the model card of a reproduction.

The card is the run's own (`lumenlm.train.card`, the one writer of every card) with what
only a reproduction has: the seed card's numbers beside ours, the recipe and budget, the
card's official files, and a sample. Every number is read from a file of the run
(config.json, metrics.jsonl, the eval JSON, meta.json) or from the card's own numbers in
`cards.CARDS`, never typed into the template.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lumenlm.reproduce.cards import Card
from lumenlm.train.card import CardParts, card_text, read_run
from lumenlm.train.card_sections import LM_ROWS, TASK_LABELS, num, setting, table


def comparison_rows(card: Card, doc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, the card's value, ours) for every number the card reports."""
    rows = []
    lm = doc.get("lm", {})
    for key, label, pct in LM_ROWS:
        if key in card.metrics:
            rows.append((label, num(card.metrics[key], pct), num(lm.get(key), pct)))
    tasks = doc.get("tasks", {})
    for key, value in card.tasks.items():
        ours = tasks.get(key, {})
        rows.append((TASK_LABELS.get(key, key) + " accuracy", num(value, True),
                     num(ours.get("acc"), True)))  # fmt: skip
    if "wikitext" in tasks:
        rows.append(("WikiText word perplexity (test)", "n/a",
                     num(tasks["wikitext"].get("word_perplexity"))))  # fmt: skip
    if lm.get("bits_per_byte") is not None and "bits_per_byte" not in card.metrics:
        rows.append(("Bits per byte", "n/a", num(lm["bits_per_byte"])))
    return rows


def format_comparison(card: Card, rows: list[tuple[str, str, str]]) -> str:
    """The table printed at the end of a reproduction."""
    return f"\n{card.title}: the card beside this reproduction\n\n" + table(
        ("Metric", card.title, "lumenlm"), rows
    )


def _remote_code(model: dict[str, Any]) -> bool | None:
    """Whether the HF export of this architecture ships lumenlm's model code."""
    from lumenlm.config import ModelConfig
    from lumenlm.export.hf import REMOTE, hf_architecture

    try:
        return hf_architecture(ModelConfig.from_dict(model)) == REMOTE
    except Exception:  # an unreadable config.json: the card says it generally
        return None


def model_card(
    card: Card, recipe: str, budget_minutes: float, run: Path, data_dir: Path, out: Path
) -> str:
    """The reproduction's model card: the run's card with the reproduction's parts.

    `out` holds the reproduction's eval.json, sample.txt and (once exported) hf/."""
    facts = read_run(run, data_dir=data_dir, eval_file=out / "eval.json")
    have = {f.get("name") for f in (facts.meta.get("source") or {}).get("files", [])}
    missing = [f for f in card.official_files if f not in have]
    data_lines = [f"- The {card.title} card trained on: {card.data_note}"]
    if missing:
        data_lines.append(
            "- **Missing official files** of the card: " + ", ".join(f"`{f}`" for f in missing)
            + ": only part of the card's data was available, so the numbers below are not "
            "a like-for-like comparison with the card"
        )  # fmt: skip
    comparison = table(("Metric", f"{card.title} card", "This model"),
                       comparison_rows(card, facts.evaluation))  # fmt: skip
    sample = out / "sample.txt"
    text = sample.read_text(encoding="utf-8").strip() if sample.is_file() else ""
    parts = CardParts(
        title=f"{card.title}: lumenlm reproduction (`--recipe {recipe}`)",
        about=(
            f"A decoder-only transformer with the architecture of the {card.title} card "
            f"(preset `{card.preset}`), trained from scratch by `lumenlm reproduce {card.key}`."
        ),
        data_lines=data_lines,
        training_rows=[
            ("Recipe", f"`--recipe {recipe}`"),
            ("Time budget", f"{setting(float(budget_minutes))} minutes (`--max-minutes`)"),
        ],
        evaluation=[f"### The {card.title} card beside this model", "", comparison, ""],
        sections=["## Sample", "", "```text", text, "```", ""] if text else [],
        hf_dir=out / "hf",
        remote_code=_remote_code(facts.config.get("model") or {}),
    )
    return card_text(facts, parts)
