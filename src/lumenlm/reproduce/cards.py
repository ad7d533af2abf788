"""The three seed model cards as data: name, preset, dataset and published numbers.

The numbers are copied from the cards in the seed folder (one place, named by the
card), so the comparison table and the generated model card read them from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lumenlm.errors import ConfigError


@dataclass(frozen=True)
class Card:
    """One seed model card: what it trained on and what it reports."""

    key: str
    """The name `lumenlm reproduce` takes."""
    title: str
    """The card's own title."""
    preset: str
    """The lumenlm preset that carries the card's architecture and recipe."""
    dataset: str
    """The `lumenlm prepare` dataset of the card."""
    metrics: dict[str, float] = field(default_factory=dict)
    """The card's language-model numbers on its validation split (loss, perplexity, top-k)."""
    tasks: dict[str, float] = field(default_factory=dict)
    """The card's benchmark accuracies (ARC-Easy, ARC-Challenge, HellaSwag)."""
    data_note: str = ""
    """What the card trained on, as it says it."""
    official_files: tuple[str, ...] = ()
    """The official data files the card's numbers need (under the dataset's folder)."""


CARDS: dict[str, Card] = {
    "librarian": Card(
        key="librarian",
        title="Librarian-Base-v0",
        preset="librarian-1.3m",
        dataset="tinystories",
        metrics={"loss": 2.5466, "perplexity": 12.7630, "top1": 0.4537, "top5": 0.7245,
                 "top10": 0.8023},
        data_note="2% of TinyStories (train), its validation split",
        official_files=("TinyStories-train.txt", "TinyStories-valid.txt"),
    ),
    "lumiere": Card(
        key="lumiere",
        title="Lumiére Transformer",
        preset="lumiere-1m",
        dataset="wikitext-2",
        metrics={"loss": 4.4180, "perplexity": 85.01},
        data_note="WikiText-2 (train split), validation loss and perplexity",
        official_files=("wiki.train.raw",),
    ),
    "lumenbase": Card(
        key="lumenbase",
        title="LumenBase",
        preset="lumenbase-128m",
        dataset="tinystories",
        tasks={"arc-easy": 0.3948, "arc-challenge": 0.2355, "hellaswag": 0.3262},
        data_note="custom datasets (not published); here the local TinyStories text",
    ),
}  # fmt: skip


def get_card(name: str) -> Card:
    """The card called `name` (a one-line error listing the names otherwise)."""
    try:
        return CARDS[name]
    except KeyError:
        raise ConfigError(f"unknown card {name!r}; use one of: {', '.join(CARDS)}") from None
