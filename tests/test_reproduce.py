"""`lumenlm reproduce` on a tiny card: every step runs, a second call skips them all, an
interrupted training resumes, and every number in the generated card is traced to a
file of the run (or to the card's own numbers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from card_numbers import run_documents, untraced
from lumenlm.errors import ConfigError
from lumenlm.reproduce import cards, pipeline
from lumenlm.reproduce.cards import Card

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHAKESPEARE = DATA / "tinyshakespeare" / "input.txt"

TINY_CARD = Card(
    key="tiny",
    title="Tiny Test Card",
    preset="tiny",
    dataset="tinyshakespeare",
    metrics={"loss": 3.25, "perplexity": 25.79, "top1": 0.3125},
    data_note="Tiny Shakespeare",
    official_files=("input.txt", "not-here.txt"),
)


@pytest.fixture
def tiny_card(monkeypatch: pytest.MonkeyPatch) -> Card:
    if not SHAKESPEARE.is_file():
        pytest.skip(f"needs the shared Tiny Shakespeare file at {SHAKESPEARE}")
    monkeypatch.setitem(cards.CARDS, "tiny", TINY_CARD)
    monkeypatch.setitem(pipeline.PROMPTS, "tinyshakespeare", "ROMEO:")
    return TINY_CARD


def _sources(out: Path, run: Path) -> list[Any]:
    """The run's files, the reproduction's and the card's own numbers."""
    docs = run_documents(run, out / "eval.json", out / "data" / "meta.json", out / "reproduce.json")
    return [*docs, TINY_CARD.metrics, TINY_CARD.tasks]


@pytest.mark.slow  # about a minute on 2 shared cores
def test_reproduce_runs_every_step_then_skips_and_traces_numbers(
    tiny_card: Card, tmp_path: Path
) -> None:
    out = tmp_path / "repro"
    lines: list[str] = []
    kw = {"recipe": "card", "budget_minutes": 0.05, "out": out, "data_root": DATA,
          "device": "cpu", "progress": False, "say": lines.append}  # fmt: skip
    r = pipeline.reproduce("tiny", **kw)
    run = r.run_dir()
    assert run is not None
    for name in ("eval.json", "sample.txt", "MODEL_CARD.md", "hf/config.json"):
        assert (out / name).is_file(), name
    assert sum("skipped" in line for line in lines) == 0
    table = lines[-1]
    assert "Tiny Test Card" in table and "25.7900" in table  # the card's number, beside ours
    doc = json.loads((out / "eval.json").read_text())
    assert f"{doc['lm']['perplexity']:.4f}" in table

    card = (out / "MODEL_CARD.md").read_text()
    assert "PATH" not in card and str(run.resolve()) in card
    assert (run / "MODEL_CARD.md").read_text() == card  # a later `lumenlm export RUN` uses it
    assert card in (out / "hf/README.md").read_text()
    for head in (
        "## Model Details",
        "## Data and Tokenizer",
        "## Evaluation Results",
        "### Validation during training",
        "## Loss Curve",
        "## Limitations",
    ):
        assert head in card, head  # fmt: skip
    assert "`not-here.txt`" in card and "Missing official files" in card
    missing, found = untraced(card, _sources(out, run))
    assert found > 20
    assert not missing, f"numbers in the card with no source file: {missing}"

    lines.clear()
    pipeline.reproduce("tiny", **kw)  # everything is done: every step is skipped
    assert sum("skipped" in line for line in lines) == len(pipeline.STEPS)

    # an interruption after training: the train step finds its budget spent and does not
    # train again; the missing evaluation (and what follows from it) is redone
    state = json.loads((out / "reproduce.json").read_text())
    state["train"]["done"] = False
    (out / "reproduce.json").write_text(json.dumps(state))
    (out / "eval.json").unlink()
    steps_before = json.loads((run / "checkpoints/last/trainer_state.json").read_text())["step"]
    lines.clear()
    pipeline.reproduce("tiny", **kw)
    redone = [line.split(":")[0] for line in lines if line.startswith("[") and "skipped" not in line
              and "..." not in line]  # fmt: skip
    assert [x.split("] ")[1] for x in redone] == ["train", "eval", "card"]
    assert json.loads((run / "checkpoints/last/trainer_state.json").read_text())["step"] == (
        steps_before
    )

    with pytest.raises(ConfigError, match="holds a reproduction"):
        pipeline.reproduce("tiny", **{**kw, "budget_minutes": 1.0})


def test_unknown_card_and_recipe_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="unknown card 'nope'; use one of: librarian"):
        pipeline.reproduce("nope")
    with pytest.raises(ConfigError, match="unknown recipe"):
        pipeline.reproduce("librarian", recipe="slow")
